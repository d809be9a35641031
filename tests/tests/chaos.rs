//! The chaos suite, short: every fault under load loses no answer (none
//! failed, none broken mid-stream, none different from the unbroken greedy
//! answer), except a gateway killed outright, which loses at most the
//! requests it carried when it died and nothing sent after. A worker killed
//! or stopped under way breaks streams, which go on elsewhere.

use std::time::Duration;

use e2e::chaos::{Fault, Fleet, Timing};

#[tokio::test(flavor = "multi_thread")]
async fn no_fault_loses_an_answer() {
    let mut fleet = Fleet::start().await;
    let timing = Timing {
        warm: Duration::from_millis(700),
        during: Duration::from_millis(2000),
        settle: Duration::from_millis(700),
    };
    let clients = 8;
    for fault in Fault::ALL {
        let tally = fleet.scenario(fault, clients, timing).await;
        eprintln!("{tally:?}");
        assert!(tally.requests > clients, "{tally:?}");
        if fault == Fault::GatewayKill {
            assert_eq!(tally.failed_after_fault, 0, "{tally:?}");
            assert!(tally.lost() <= clients, "{tally:?}");
        } else {
            assert_eq!(tally.lost(), 0, "{tally:?}");
        }
        // The faults that strike a worker under way did break streams.
        if matches!(fault, Fault::WorkerKill | Fault::WorkerStop) {
            assert!(tally.continued >= 1, "{tally:?}");
        }
    }
}
