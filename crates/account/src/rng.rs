//! Bridges the workspace's `rand` 0.9 generators to the `rand_core` 0.6 traits that
//! opaque-ke 4 takes, so callers never need a second `rand`.

/// A `rand` 0.9 generator seen through opaque-ke's `rand` 0.8 traits.
pub(crate) struct Compat<'a, R: ?Sized>(pub(crate) &'a mut R);

impl<R: rand::RngCore + ?Sized> opaque_ke::rand::RngCore for Compat<'_, R> {
    fn next_u32(&mut self) -> u32 {
        self.0.next_u32()
    }

    fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        self.0.fill_bytes(dest);
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), opaque_ke::rand::Error> {
        self.0.fill_bytes(dest);
        Ok(())
    }
}

/// Sound because `R` is itself a `CryptoRng`: the adapter only forwards its output.
impl<R: rand::CryptoRng + ?Sized> opaque_ke::rand::CryptoRng for Compat<'_, R> {}
