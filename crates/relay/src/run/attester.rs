//! Slow TEE evidence, made on tokio's blocking pool: a TDX quote or an SNP report takes
//! milliseconds or more, and a worker's event loop keeps serving its other sessions while
//! it is made.

use std::sync::Arc;

use tokio::sync::{mpsc, Semaphore};

use crate::evidence::{obtain, EvidenceSource, NO_EVIDENCE};
use crate::table::AttestRequest;

/// Reports made at once per worker; more wait for a turn.
const CONCURRENT: usize = 2;
/// Requests waiting or under way per worker. Beyond that a client is told to ask again,
/// so a flood of Attest requests costs queue space, not memory without bound.
const QUEUED: usize = 64;

/// Evidence that was asked for, with the answer for the client.
pub type Answer = (AttestRequest, Result<attest::Evidence, String>);

/// Makes evidence for [`TableEvent::Attest`](crate::table::TableEvent::Attest) requests
/// off the event loop.
pub struct Attester {
    source: Option<Arc<dyn EvidenceSource>>,
    permits: Arc<Semaphore>,
    tx: mpsc::UnboundedSender<Answer>,
    rx: mpsc::UnboundedReceiver<Answer>,
    pending: usize,
}

impl Attester {
    /// An attester for the table's evidence source ([`SessionTable::evidence_source`]).
    ///
    /// [`SessionTable::evidence_source`]: crate::table::SessionTable::evidence_source
    pub fn new(source: Option<Arc<dyn EvidenceSource>>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Self {
            source,
            permits: Arc::new(Semaphore::new(CONCURRENT)),
            tx,
            rx,
            pending: 0,
        }
    }

    /// Starts making evidence for `req`; the answer comes out of [`Attester::done`].
    pub fn start(&mut self, req: AttestRequest) {
        self.pending += 1;
        let source = match &self.source {
            Some(s) if self.pending <= QUEUED => s.clone(),
            Some(_) => {
                let busy =
                    "this relay is busy making evidence for other sessions; ask again in a moment";
                let _ = self.tx.send((req, Err(busy.to_string())));
                return;
            }
            None => {
                let _ = self.tx.send((req, Err(NO_EVIDENCE.to_string())));
                return;
            }
        };
        let (permits, tx) = (self.permits.clone(), self.tx.clone());
        tokio::spawn(async move {
            let _turn = permits.acquire_owned().await;
            let report_data = req.report_data;
            let made = tokio::task::spawn_blocking(move || obtain(source.as_ref(), &report_data))
                .await
                .unwrap_or_else(|e| Err(format!("making TEE evidence failed: {e}")));
            let _ = tx.send((req, made));
        });
    }

    /// The next finished request. Pending forever when none is under way.
    pub async fn done(&mut self) -> Answer {
        match self.rx.recv().await {
            Some(answer) => {
                self.pending -= 1;
                answer
            }
            // The attester holds a sender, so the channel never closes.
            None => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;
    use crate::evidence::{EvidenceError, Sim};
    use crate::table::SessionId;

    /// Sim evidence that takes a while and counts how many reports run at once.
    struct Slow {
        inner: Sim,
        running: AtomicUsize,
        most: AtomicUsize,
    }

    impl EvidenceSource for Slow {
        fn evidence(&self, report_data: &[u8; 64]) -> Result<attest::Evidence, EvidenceError> {
            let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.most.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(5));
            self.running.fetch_sub(1, Ordering::SeqCst);
            self.inner.evidence(report_data)
        }
    }

    fn request(n: u64) -> AttestRequest {
        AttestRequest {
            id: SessionId(n),
            reply_to: "100.64.0.2:51822".parse().unwrap(),
            report_data: [n as u8; 64],
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_flood_is_queued_up_to_a_limit_and_the_rest_told_to_ask_again() {
        let vendor = attest::SimVendor::new(ed25519_dalek::SigningKey::from_bytes(&[1; 32]));
        let slow = Arc::new(Slow {
            inner: Sim::with_measurement(vendor, [2; 32]),
            running: AtomicUsize::new(0),
            most: AtomicUsize::new(0),
        });
        let mut attester = Attester::new(Some(slow.clone()));
        let flood = QUEUED as u64 + 6;
        for n in 0..flood {
            attester.start(request(n));
        }
        let (mut made, mut busy) = (Vec::new(), Vec::new());
        for _ in 0..flood {
            let (req, answer) = tokio::time::timeout(Duration::from_secs(10), attester.done())
                .await
                .expect("every request is answered");
            match answer {
                Ok(ev) => {
                    // Each answer carries the evidence of its own request.
                    let claims = attest::verify_sim(
                        &ev.quote,
                        &[
                            attest::SimVendor::new(ed25519_dalek::SigningKey::from_bytes(&[1; 32]))
                                .verifying_key(),
                        ],
                    )
                    .unwrap();
                    assert_eq!(claims.report_data, req.report_data);
                    made.push(req.id.0);
                }
                Err(why) => {
                    assert!(why.contains("busy"), "{why}");
                    busy.push(req.id.0);
                }
            }
        }
        made.sort_unstable();
        busy.sort_unstable();
        assert_eq!(made, (0..QUEUED as u64).collect::<Vec<_>>());
        assert_eq!(busy, (QUEUED as u64..flood).collect::<Vec<_>>());
        assert!(slow.most.load(Ordering::SeqCst) <= CONCURRENT);
        // Once the queue has drained, requests are served again.
        attester.start(request(1000));
        let (req, answer) = attester.done().await;
        assert_eq!(req.id.0, 1000);
        assert!(answer.is_ok());
    }

    #[tokio::test]
    async fn without_a_source_the_answer_says_so() {
        let mut attester = Attester::new(None);
        attester.start(request(1));
        let (_, answer) = attester.done().await;
        assert_eq!(answer.unwrap_err(), "this relay runs without TEE evidence");
    }
}
