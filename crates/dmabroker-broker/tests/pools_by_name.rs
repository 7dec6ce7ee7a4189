//! Pools by name (protocol version 3) through a real broker: a producer
//! registers a pool with an ACL, consumers attach by name; another uid only
//! with a grant, refused with the broker's message otherwise; the name is
//! free again once the producer goes. Other users are threads that change
//! their uid (root only; skipped visibly otherwise).

use dmabroker::pool::{
    attach_by_name, ConsumerOptions, FrameMeta, NamedPoolError, PoolOptions, PoolRegistration, Producer,
};
use dmabroker::proto::{Access, Grant};
use dmabroker::Heaps;
use std::time::Duration;

mod common;

use common::{as_user, TestBroker, NOBODY};

fn producer() -> Producer {
    Producer::allocate(&Heaps::discover(), "memfd", &PoolOptions::new(2, 4096)).unwrap()
}

/// Let in whoever the broker sent, until `n` consumers are attached.
fn admit(registration: &mut PoolRegistration, producer: &mut Producer, n: usize) {
    for _ in 0..500 {
        while let Some((socket, _who)) = registration.accept().unwrap() {
            producer.attach(socket).unwrap();
        }
        if producer.wait_for_consumers(n, Duration::from_millis(10)) {
            return;
        }
    }
    panic!("{n} consumers did not attach");
}

#[test]
fn attach_by_name_streams_frames_and_the_name_is_freed_with_its_producer() {
    let broker = TestBroker::start("pools-basic", None);
    let mut producer = producer();
    let mut registration = PoolRegistration::register(&broker.path, "cam0", &[], "test pool").unwrap();
    assert!(matches!(
        PoolRegistration::register(&broker.path, "cam0", &[], "again"),
        Err(NamedPoolError::AlreadyExists(_))
    ));
    let path = broker.path.clone();
    let consumer = std::thread::spawn(move || {
        let (mut consumer, info) = attach_by_name(&path, "cam0", &ConsumerOptions::default()).unwrap();
        assert_eq!(info.access, Access::ReadWrite, "the owner's own uid");
        assert_eq!(info.description, "test pool");
        let mut frame = consumer.recv(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(frame.info().meta, 42);
        assert_eq!(&frame.read().unwrap()[..5], b"hello");
    });
    admit(&mut registration, &mut producer, 1);
    let mut slot = producer.acquire(None).unwrap();
    slot.mapping().begin_write().unwrap()[..5].copy_from_slice(b"hello");
    slot.submit(FrameMeta::new(5).meta(42)).unwrap();
    consumer.join().unwrap();
    assert!(matches!(
        attach_by_name(&broker.path, "nope", &ConsumerOptions::default()),
        Err(NamedPoolError::NotFound(_))
    ));
    // The producer goes: its name is free at once.
    drop(registration);
    assert!(matches!(
        attach_by_name(&broker.path, "cam0", &ConsumerOptions::default()),
        Err(NamedPoolError::NotFound(_))
    ));
    assert!(PoolRegistration::register(&broker.path, "cam0", &[], "restarted").is_ok());
}

#[test]
fn another_uid_attaches_only_with_a_grant() {
    if !rustix::process::geteuid().is_root() {
        println!("SKIP another_uid_attaches_only_with_a_grant: needs root to play other uids");
        return;
    }
    let broker = TestBroker::start("pools-acl", None);
    let mut producer = producer();
    let grant: Grant = format!("uid={NOBODY}:ro").parse().unwrap();
    let mut registration = PoolRegistration::register(&broker.path, "cam1", &[grant], "acl").unwrap();
    let path = broker.path.clone();
    let refused = as_user(NOBODY - 1, move || match attach_by_name(&path, "cam1", &ConsumerOptions::default()) {
        Err(NamedPoolError::NotAllowed(m)) => m,
        other => panic!("an ungranted uid attached: {other:?}"),
    });
    assert!(refused.contains(&format!("grants nothing to uid {}", NOBODY - 1)), "{refused}");
    assert!(refused.contains(&format!("grants=uid={}:ro", NOBODY - 1)), "{refused}");
    let path = broker.path.clone();
    let granted = std::thread::spawn(move || {
        as_user(NOBODY, move || {
            let (mut consumer, info) = attach_by_name(&path, "cam1", &ConsumerOptions::default()).unwrap();
            assert_eq!(info.access, Access::ReadOnly);
            assert_eq!(info.producer_uid, 0);
            let frame = consumer.recv(Some(Duration::from_secs(5))).unwrap();
            frame.info().meta
        })
    });
    admit(&mut registration, &mut producer, 1);
    let slot = producer.acquire(None).unwrap();
    slot.submit(FrameMeta::new(1).meta(7)).unwrap();
    assert_eq!(granted.join().unwrap(), 7);
}
