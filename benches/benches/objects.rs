//! Criterion benches of the object store, in process, beside the copy they cannot beat:
//!
//! * `put`: storing an object (reserve, allocate, copy in) against a plain `memcpy` of the
//!   same bytes into a fresh buffer;
//! * `lease`: taking and dropping a read handle (what every get and every infer by ref
//!   does);
//! * `spill_restore`: a store holding two objects' worth of memory cycling through three,
//!   so every access spills one object to a file and maps another back.

use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use prism_client::DType;
use prism_server::metrics::Metrics;
use prism_server::store::{Meta, Owner, Store};

const OWNER: Owner = Owner::Client {
    ttl: Duration::from_secs(3600),
};

fn meta(bytes: usize) -> Meta {
    Meta {
        datatype: DType::U8,
        shape: vec![bytes],
    }
}

fn store(capacity: usize, dir: &std::path::Path) -> Arc<Store> {
    Arc::new(Store::new(
        capacity,
        dir.to_owned(),
        Duration::from_secs(3600),
        Metrics::new().store,
    ))
}

fn put(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("prism-bench-{}", std::process::id()));
    let mut group = c.benchmark_group("object_put");
    for size in [4 << 10, 1 << 20, 64 << 20] {
        let data = vec![7u8; size];
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::new("memcpy", size), &data, |b, data| {
            b.iter(|| {
                let mut v = vec![0u8; data.len()];
                v.copy_from_slice(data);
                v
            })
        });
        let s = store(1 << 30, &dir);
        group.bench_with_input(BenchmarkId::new("store", size), &data, |b, data| {
            b.iter(|| {
                let r = s.put(meta(data.len()), data, OWNER).expect("fits");
                s.delete(r);
            })
        });
    }
    group.finish();
}

fn lease(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("prism-bench-{}", std::process::id()));
    let s = store(1 << 20, &dir);
    let r = s.put(meta(1024), &[1; 1024], OWNER).expect("fits");
    c.bench_function("object_lease", |b| {
        b.iter(|| s.lease(r).expect("stored").expect("ready"))
    });
}

fn spill_restore(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("prism-bench-spill-{}", std::process::id()));
    let size = 1 << 20;
    let s = store(2 * size, &dir);
    let refs: Vec<_> = (0..3)
        .map(|i| {
            s.put(meta(size), &vec![i as u8; size], OWNER)
                .expect("fits after spilling")
        })
        .collect();
    let mut group = c.benchmark_group("object_spill_restore");
    group.throughput(Throughput::Bytes(size as u64));
    let mut i = 0;
    group.bench_function("1MiB", |b| {
        b.iter(|| {
            i = (i + 1) % 3;
            s.restore(s.lease(refs[i]).expect("stored").expect("ready"))
        })
    });
    group.finish();
}

criterion_group!(benches, put, lease, spill_restore);
criterion_main!(benches);
