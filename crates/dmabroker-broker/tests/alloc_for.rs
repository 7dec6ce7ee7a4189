//! Allocation by constraints through the broker (`AllocateFor`, protocol
//! version 2): the heap chooser over the heaps the policy allows, quotas as
//! for `Allocate`, explanations when no heap fits, bad constraints refused.

use dmabroker::client::AllocateForError;
use dmabroker::constraints::{Constraints, DeviceCoherency};
use dmabroker::heap::{HeapKind, Heaps};
use dmabroker::proto::{self, wire, AllocateForRequest, DeviceRequirements, ErrorCode, Request, Response};
use std::os::fd::AsFd;
use std::time::Duration;

mod common;

use common::{eventually, memfd_policy, uid, TestBroker};

#[test]
fn allocates_by_constraints_from_memfd_with_reasons() {
    let broker = TestBroker::start("for-memfd", None);
    let mut c = broker.client();
    assert_eq!(c.version(), proto::PROTOCOL_VERSION);
    let isp = Constraints::builder("isp0").max_segments(256).align(4096).granularity(64).build().unwrap();
    let cpu = Constraints::builder("viewer").dma_buf(false).build().unwrap();
    let merged = isp.merge(&cpu).unwrap();
    let got = c.allocate_for(&merged, 10_000, Some("frame")).unwrap();
    assert_eq!(got.choice.heap, "memfd", "{:?}", got.choice);
    assert_eq!(got.choice.kind, "memfd");
    assert_eq!(got.choice.len, 10_048, "rounded to the granularity");
    assert_eq!(got.buffer.len(), 12288, "then to pages");
    assert_eq!(got.choice.allocated_len, 12288);
    assert!(got.buffer.is_size_sealed());
    assert!(got.choice.reasons.iter().any(|r| r.contains("isp0 needs a start aligned to 4 KiB")), "{:?}", got.choice);
    got.buffer.map_read_write().unwrap().begin_write().unwrap().fill(3);
    let stats = c.stats().unwrap();
    assert_eq!((stats.used_buffers, stats.used_bytes), (1, 12288), "charged like Allocate");
    // Restricted to one heap.
    let mut request = AllocateForRequest::new(&merged, 4096);
    request.heap = Some("memfd".into());
    assert_eq!(c.allocate_for_with(request).unwrap().choice.heap, "memfd");
    let mut request = AllocateForRequest::new(&merged, 4096);
    request.heap = Some("no-such-heap".into());
    assert!(matches!(c.allocate_for_with(request), Err(AllocateForError::NoSuchHeap(_))));
}

/// Huge pages where the host has free ones (`echo 4 > /proc/sys/vm/nr_hugepages`).
#[test]
fn a_page_size_request_gets_hugetlb_where_pages_are_free() {
    let free = Heaps::discover()
        .infos()
        .into_iter()
        .any(|h| h.kind == HeapKind::Hugetlb && h.page_size == 2 << 20 && h.free_bytes.unwrap_or(0) >= 2 << 20);
    let broker = TestBroker::start("for-hugetlb", None);
    let mut c = broker.client();
    let wants = Constraints::builder("tlb0").page_size(2 << 20).build().unwrap();
    match c.allocate_for(&wants, 4096, None) {
        Ok(got) => {
            assert!(free, "hugetlb chosen without free pages?");
            assert_eq!(got.choice.heap, "hugetlb");
            assert_eq!(got.buffer.len(), 2 << 20);
            assert!(got.choice.passed_over.iter().any(|p| p.starts_with("memfd")), "{:?}", got.choice);
        }
        Err(AllocateForError::NoSuitableHeap(e)) => {
            assert!(!free, "{e}");
            assert!(e.contains("tlb0 needs pages of at least 2 MiB"), "{e}");
            eprintln!("skipped the allocation: no free 2 MiB huge page on this host");
        }
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn heaps_the_policy_forbids_are_named_in_the_explanation() {
    let uid = uid();
    let policy = memfd_policy(uid, "64MiB", 8);
    let broker = TestBroker::start("for-policy", Some(&policy));
    let mut c = broker.client();
    let isp = Constraints::builder("isp0").contiguous().build().unwrap();
    let e = c.allocate_for(&isp, 1 << 20, None).unwrap_err();
    let AllocateForError::NoSuitableHeap(text) = &e else { panic!("{e}") };
    assert!(text.contains("isp0 needs physically contiguous memory"), "{text}");
    assert!(text.contains("memfd: contiguous only to 4 KiB"), "{text}");
    let others: Vec<String> = Heaps::discover().names().into_iter().filter(|n| n != "memfd").collect();
    if !others.is_empty() {
        assert!(text.contains(&format!("not allowed by policy for uid {uid}")), "{text}");
        assert!(text.contains("ask the administrator"), "{text}");
    }
    // The session stays open; what fits the policy is served.
    let small = c.allocate_for(&isp, 4096, None).unwrap();
    assert_eq!(small.choice.heap, "memfd", "one page is one segment");
    // A device that needs a dma-buf gets none from memfd.
    let gpu = Constraints::builder("gpu0").dma_buf(true).build().unwrap();
    let text = c.allocate_for(&gpu, 4096, None).unwrap_err().to_string();
    assert!(
        text.contains("gpu0 needs a dma-buf to import") && text.contains("CPU/IPC memory, not a dma-buf"),
        "{text}"
    );
    // A heap outside the policy, asked for by name.
    if let Some(other) = others.first() {
        let mut request = AllocateForRequest::new(&Constraints::none(), 4096);
        request.heap = Some(other.clone());
        let text = c.allocate_for_with(request).unwrap_err().to_string();
        assert!(text.contains(&format!("{other}: not usable (not allowed by policy for uid {uid})")), "{text}");
    }
}

#[test]
fn quotas_apply_as_to_allocate() {
    let policy = memfd_policy(uid(), "64KiB", 2);
    let broker = TestBroker::start("for-quota", Some(&policy));
    let mut c = broker.client();
    let any = Constraints::none();
    let a = c.allocate_for(&any, 4096, None).unwrap();
    let e = c.allocate_for(&any, 1 << 20, None).unwrap_err();
    assert!(matches!(e, AllocateForError::QuotaExceeded(_)), "{e}");
    let b = c.allocate("memfd", 4096, None).unwrap();
    let e = c.allocate_for(&any, 4096, None).unwrap_err();
    assert!(matches!(e, AllocateForError::QuotaExceeded(_)), "{e}");
    assert!(e.to_string().contains("quota of 64 KiB / 2 buffers"), "{e}");
    drop(a);
    let _c = eventually("allocating after a close", || c.allocate_for(&any, 4096, None));
    drop(b);
}

/// A raw session: `Hello` with the given versions, then `request` encoded
/// without the client's checks. Returns the reply and whether the broker
/// then ended the session.
fn raw(broker: &TestBroker, max_version: u16, request: &Request) -> (Response, bool) {
    let s = broker.raw_socket();
    let mut buf = vec![0; proto::MAX_RESPONSE_LEN];
    let hello = proto::encode_request(&Request::Hello { min_version: 1, max_version }).unwrap();
    wire::send(s.as_fd(), &hello, None, false).unwrap();
    let r = wire::recv(s.as_fd(), &mut buf, false).unwrap().unwrap();
    assert!(
        matches!(proto::decode_response(&buf[..r.len]).unwrap(), Response::Hello { version, .. } if version == max_version)
    );
    wire::send(s.as_fd(), &proto::encode_request_unchecked(request).unwrap(), None, false).unwrap();
    let r = wire::recv(s.as_fd(), &mut buf, false).unwrap().unwrap();
    let response = proto::decode_response(&buf[..r.len]).unwrap();
    // The end of the stream when the broker ended the session; nothing
    // within half a second when it did not.
    rustix::net::sockopt::set_socket_timeout(&s, rustix::net::sockopt::Timeout::Recv, Some(Duration::from_millis(500)))
        .unwrap();
    let closed = matches!(wire::recv(s.as_fd(), &mut buf, false), Ok(None));
    (response, closed)
}

#[test]
fn bad_constraints_are_bad_requests() {
    let broker = TestBroker::start("for-bad", None);
    let device = |f: fn(&mut DeviceRequirements)| {
        let mut d = DeviceRequirements { device: "dev0".into(), ..Default::default() };
        f(&mut d);
        Request::AllocateFor(AllocateForRequest { len: 4096, devices: vec![d], heap: None, name: None })
    };
    let cases = [
        (device(|d| d.align = Some(3)), "power of two"),
        (device(|d| d.page_size = Some(12288)), "power of two"),
        (device(|d| d.max_segments = Some(0)), "max_segments"),
        (device(|d| d.address_bits = Some(70)), "address_bits"),
        (device(|d| d.device = "x".repeat(200)), "device"),
        (device(|d| d.device = String::new()), "device"),
        (
            Request::AllocateFor(AllocateForRequest {
                len: u64::MAX,
                devices: vec![DeviceRequirements { device: "d".into(), granularity: Some(4096), ..Default::default() }],
                heap: None,
                name: None,
            }),
            "overflows",
        ),
        (Request::AllocateFor(AllocateForRequest { len: 0, devices: vec![], heap: None, name: None }), "len"),
        (
            Request::AllocateFor(AllocateForRequest {
                len: 4096,
                devices: vec![DeviceRequirements { device: "d".into(), ..Default::default() }; proto::MAX_DEVICES + 1],
                heap: None,
                name: None,
            }),
            "devices",
        ),
        (
            Request::AllocateFor(AllocateForRequest {
                len: 4096,
                devices: vec![
                    DeviceRequirements {
                        device: "gpu".into(),
                        coherency: Some(DeviceCoherency::Snoops),
                        ..Default::default()
                    },
                    DeviceRequirements {
                        device: "vpu".into(),
                        coherency: Some(DeviceCoherency::NeedsUncached),
                        ..Default::default()
                    },
                ],
                heap: None,
                name: None,
            }),
            "uncached",
        ),
    ];
    for (request, says) in &cases {
        let (response, closed) = raw(&broker, proto::PROTOCOL_VERSION, request);
        match response {
            Response::Error { code: ErrorCode::BadRequest, message } => {
                assert!(message.contains(says), "{says}: {message}");
            }
            other => panic!("{request:?}: expected BadRequest, got {other:?}"),
        }
        assert!(closed, "a bad request ends the session");
    }
    // A version-1 session cannot ask for it.
    let fine = device(|d| d.align = Some(4096));
    let (response, closed) = raw(&broker, 1, &fine);
    assert!(
        matches!(&response, Response::Error { code: ErrorCode::BadRequest, message } if message.contains("version 2"))
    );
    assert!(closed);
    // And the broker serves others.
    let (response, closed) = raw(&broker, proto::ALLOCATE_FOR_VERSION, &fine);
    assert!(matches!(response, Response::AllocatedFor { .. }), "{response:?}");
    assert!(!closed);
}

/// A buffer allocated for a device that does not snoop the CPU's caches
/// keeps that property in every process that gets it from the broker
/// (protocol version 3): the allocating client and an importer both see it
/// non-coherent, so their CPU access does the cache maintenance. A
/// version-2 session gets the plain reply, without properties.
#[test]
fn non_coherent_buffers_keep_their_maintenance_across_the_broker() {
    use dmabroker::buffer::{Coherency, CpuAccessKind};
    use dmabroker::client::PublishOptions;
    let broker = TestBroker::start("for-coherency", None);
    let mut c = broker.client();
    assert!(c.version() >= dmabroker::proto::PROPERTIES_VERSION);
    let isp = Constraints::builder("isp0").dma_buf(false).coherency(DeviceCoherency::NeedsMaintenance).build().unwrap();
    let got = c.allocate_for(&isp, 4096, Some("noncoherent")).unwrap();
    assert_eq!(got.buffer.properties().coherency, Coherency::NonCoherent, "{:?}", got.choice);
    // Maintenance runs on this buffer's CPU access (clean+invalidate: a
    // no-op in effect on x86, but the path is the non-coherent one).
    let mut w = got.buffer.map_read_write().unwrap().into_access(CpuAccessKind::ReadWrite).unwrap();
    w.as_mut_slice().unwrap()[0] = 42;
    drop(w.end());
    c.publish(&got.buffer, PublishOptions::named("noncoherent")).unwrap();
    let mut other = broker.client();
    let imported = other.import("noncoherent").unwrap();
    assert_eq!(imported.buffer.properties().coherency, Coherency::NonCoherent);
    assert_eq!(imported.buffer.map_read().unwrap().begin_read().unwrap()[0], 42);
    // An old client: the reply it knows, no properties around it.
    let (response, closed) = raw(&broker, 2, &Request::Import { key: "noncoherent".into() });
    assert!(matches!(response, Response::Imported { .. }) && !closed, "{response:?}");
    let (response, _) = raw(&broker, 3, &Request::Import { key: "noncoherent".into() });
    match response {
        Response::WithProperties { properties, reply } => {
            assert_eq!(properties.coherency, Coherency::NonCoherent);
            assert!(matches!(*reply, Response::Imported { .. }));
        }
        other => panic!("{other:?}"),
    }
}
