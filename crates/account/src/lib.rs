//! Anonymous accounts: OPAQUE registration and login, credit, the issuer's store.
