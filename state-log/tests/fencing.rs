//! Write-side fencing of the embedded state log: fenced appends and snapshots are refused below
//! a ledger's fence, raise it when accepted, leave plain writes alone, and survive a reopen.

use std::sync::Arc;

use sardonyx_state_log::{EmbeddedLog, Error, Ledgers, RequestId};

fn rid(seq: u64) -> RequestId {
    RequestId::new(5, seq)
}

fn fenced(ledger: &str, fence: u64, current: u64) -> Error {
    Error::Fenced {
        ledger: ledger.into(),
        fence,
        current,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fenced_writes_below_the_fence_are_refused_and_the_fence_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(dir.path()).await.unwrap();
    let ledgers: Arc<dyn Ledgers> = Arc::new(log.clone());

    // A ledger starts unfenced; plain appends leave it so.
    assert_eq!(ledgers.append("l", rid(0), b"plain".to_vec()).await, Ok(0));
    assert_eq!(ledgers.info("l").await.unwrap().fence, 0);

    // Accepted at a higher or equal fence; the fence is raised to it.
    assert_eq!(
        ledgers
            .append_fenced("l", 3, rid(1), b"owner-3".to_vec())
            .await,
        Ok(1)
    );
    assert_eq!(ledgers.info("l").await.unwrap().fence, 3);
    assert_eq!(
        ledgers
            .append_fenced("l", 3, rid(2), b"batch-3".to_vec())
            .await,
        Ok(2)
    );
    // A repeated request id at an admitted fence answers with its original position.
    assert_eq!(
        ledgers
            .append_fenced("l", 3, rid(2), b"again".to_vec())
            .await,
        Ok(2)
    );

    // Refused below the fence, with the exact values; nothing changes.
    let err = ledgers
        .append_fenced("l", 2, rid(3), b"stale".to_vec())
        .await
        .unwrap_err();
    assert_eq!(err, fenced("l", 2, 3));
    assert!(!err.is_retryable() && !err.is_fatal());
    assert_eq!(
        err.to_string(),
        "ledger \"l\" is fenced at epoch 3: a write with epoch 2 was refused (a newer owner took over)"
    );
    // Even the retry of a request the ledger already holds is refused below the fence.
    assert_eq!(
        ledgers
            .append_fenced("l", 2, rid(1), b"owner-3".to_vec())
            .await,
        Err(fenced("l", 2, 3))
    );
    assert_eq!(
        ledgers
            .snapshot_fenced("l", 2, 2, b"stale state".to_vec())
            .await,
        Err(fenced("l", 2, 3))
    );
    let info = ledgers.info("l").await.unwrap();
    assert_eq!((info.next_position, info.fence), (3, 3));
    let read = ledgers.read("l", 0).await.unwrap();
    assert_eq!(read.snapshot, None, "the refused snapshot replaced nothing");
    assert_eq!(read.entries.len(), 3);

    // A command rejected for its own reason does not raise the fence.
    assert!(matches!(
        ledgers.snapshot_fenced("l", 9, 99, b"x".to_vec()).await,
        Err(Error::InvalidRequest(_))
    ));
    assert_eq!(ledgers.info("l").await.unwrap().fence, 3);

    // An accepted fenced snapshot raises it.
    ledgers
        .snapshot_fenced("l", 5, 1, b"state-5".to_vec())
        .await
        .unwrap();
    assert_eq!(ledgers.info("l").await.unwrap().fence, 5);
    assert_eq!(
        ledgers
            .append_fenced("l", 4, rid(4), b"late".to_vec())
            .await,
        Err(fenced("l", 4, 5))
    );

    // Plain writes are unaffected by the fence and do not move it.
    assert_eq!(
        ledgers.append("l", rid(5), b"plain-2".to_vec()).await,
        Ok(3)
    );
    ledgers
        .snapshot("l", 2, b"plain state".to_vec())
        .await
        .unwrap();
    assert_eq!(ledgers.info("l").await.unwrap().fence, 5);

    // Fences are per ledger.
    assert_eq!(
        ledgers.append_fenced("m", 1, rid(6), b"m".to_vec()).await,
        Ok(0)
    );
    assert_eq!(ledgers.info("m").await.unwrap().fence, 1);
    drop(ledgers);
    log.close().await.unwrap();

    // After a reopen the fences hold.
    let log = EmbeddedLog::open(dir.path()).await.unwrap();
    assert_eq!(log.info("l").await.unwrap().fence, 5);
    assert_eq!(
        log.snapshot_fenced("l", 4, 3, b"stale".to_vec()).await,
        Err(fenced("l", 4, 5))
    );
    assert_eq!(
        log.append_fenced("l", 5, rid(7), b"batch-5".to_vec()).await,
        Ok(4)
    );
    assert_eq!(
        log.append_fenced("m", 0, rid(8), b"m".to_vec()).await,
        Err(fenced("m", 0, 1))
    );
    let read = log.read("l", 0).await.unwrap();
    assert_eq!(read.snapshot, Some((2, b"plain state".to_vec())));
    assert_eq!(
        read.entries,
        vec![(3, b"plain-2".to_vec()), (4, b"batch-5".to_vec())]
    );
    log.close().await.unwrap();
}
