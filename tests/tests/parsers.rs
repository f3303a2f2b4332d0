//! A seeded property test of every parser a client's bytes reach: the V2 JSON request
//! (with and without a binary part), BYTES elements, an object put, a task's arguments.
//! Each is fed valid documents mutated at random (bytes flipped, dropped, duplicated,
//! tokens spliced in: huge shapes, NaN, deep nesting, cut strings). Every input must be
//! answered (parsed or refused), never panic, and never allocate much more than its own
//! size: a counting allocator measures each parse's peak.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use bytes::Bytes;
use prism_protocol::ray::{ArgumentValue, ObjectTensor, TaskRequest};
use prism_protocol::v2;
use prism_server::codec::{request, tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Counts the bytes this thread holds, and the peak since the last reset.
struct Counting;

thread_local! {
    static HELD: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn held(delta: isize) {
    // `try_with`: the allocator also runs while thread-locals are torn down.
    let _ = HELD.try_with(|h| {
        let now = h.get() + delta;
        h.set(now);
        let _ = PEAK.try_with(|p| p.set(p.get().max(now)));
    });
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        held(layout.size() as isize);
        // SAFETY: forwarded as given.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        held(-(layout.size() as isize));
        // SAFETY: forwarded as given.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        held(new_size as isize - layout.size() as isize);
        // SAFETY: forwarded as given.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The most a parse may hold beyond what it was given: a multiple of the input (a JSON
/// number becomes an 8-byte value, strings are copied, error messages quote) plus a
/// fixed allowance.
fn bound(input: usize) -> isize {
    (64 * input + (256 << 10)) as isize
}

/// Runs `parse` on `input`; panics (with the input) if it panics or allocates past the
/// bound.
fn check(what: &str, input: &[u8], parse: impl FnOnce(&[u8])) {
    let base = HELD.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| parse(input)));
    let peak = PEAK.with(Cell::get) - base;
    let shown = String::from_utf8_lossy(&input[..input.len().min(300)]).into_owned();
    assert!(outcome.is_ok(), "{what}: panicked on {shown:?}");
    assert!(
        peak <= bound(input.len()),
        "{what}: {peak} bytes held for a {}-byte input: {shown:?}",
        input.len()
    );
}

const TOKENS: &[&str] = &[
    "NaN",
    "-Infinity",
    "1e309",
    "-1",
    "0",
    "18446744073709551616",
    "9223372036854775807",
    "[9223372036854775807, 9223372036854775807]",
    "[4294967296]",
    "\"",
    "\\u0000",
    "[",
    "]",
    "{",
    "}",
    ",",
    ":",
    "null",
    "true",
    "\"BYTES\"",
    "\"FP16\"",
    "\"INT8\"",
    "{\"binary_data_size\": 4}",
    "{\"binary_data_size\": -4}",
    "{\"binary_data_size\": 18446744073709551615}",
    "{\"object_ref\": \"abab\"}",
    "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
];

/// `seed` changed a little: a few edits of random kinds.
fn mutate(rng: &mut StdRng, seed: &[u8]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..rng.random_range(1..=4) {
        let at = rng.random_range(0..=v.len());
        match rng.random_range(0..6) {
            0 if !v.is_empty() => {
                let i = at.min(v.len() - 1);
                v[i] = rng.random();
            }
            1 if at < v.len() => {
                let end = (at + rng.random_range(1..8)).min(v.len());
                v.drain(at..end);
            }
            2 => {
                let t = TOKENS[rng.random_range(0..TOKENS.len())];
                v.splice(at..at, t.bytes());
            }
            3 if at < v.len() => {
                let end = (at + rng.random_range(1..16)).min(v.len());
                let piece = v[at..end].to_vec();
                v.splice(at..at, piece);
            }
            4 => v.truncate(at),
            _ => {
                // A token in place of a stretch: a shape, a number, a type.
                let end = (at + rng.random_range(0..12)).min(v.len());
                let t = TOKENS[rng.random_range(0..TOKENS.len())];
                v.splice(at..end, t.bytes());
            }
        }
    }
    v
}

const ROUNDS: usize = 4000;

fn fuzz(what: &str, seeds: &[&[u8]], parse: impl Fn(&[u8])) {
    let mut rng = StdRng::seed_from_u64(0x5eed_0000 + what.len() as u64);
    for seed in seeds {
        check(what, seed, &parse);
    }
    for _ in 0..ROUNDS {
        let seed = seeds[rng.random_range(0..seeds.len())];
        let input = mutate(&mut rng, seed);
        check(what, &input, &parse);
    }
}

#[test]
fn v2_json_requests() {
    let seeds: &[&[u8]] = &[
        br#"{"id":"a","inputs":[{"name":"INPUT0","shape":[2,2],"datatype":"FP32","data":[[1,2],[3,4]]}],"outputs":[{"name":"OUTPUT0","parameters":{"binary_data_size":true}}],"parameters":{"timeout_ms":100}}"#,
        br#"{"inputs":[{"name":"TEXT","shape":[2],"datatype":"BYTES","data":["a","b"]}]}"#,
        br#"{"inputs":[{"name":"X","shape":[3],"datatype":"INT8","data":[1,-2,3]},{"name":"Y","shape":[1],"datatype":"BOOL","data":[true]}]}"#,
        br#"{"inputs":[{"name":"INPUT0","parameters":{"object_ref":"abababababababababababababababab"}}],"parameters":{"async":true}}"#,
    ];
    fuzz("v2 JSON request", seeds, |input| {
        let _ = request::decode(input, Bytes::new());
    });
}

#[test]
fn v2_binary_requests() {
    // The header's length is the first byte; the rest is the binary part.
    let header = br#"{"inputs":[{"name":"A","shape":[2],"datatype":"FP32","parameters":{"binary_data_size":8}},{"name":"T","shape":[1],"datatype":"BYTES","parameters":{"binary_data_size":6}}]}"#;
    let mut body = vec![header.len() as u8];
    body.extend_from_slice(header);
    body.extend_from_slice(&1f32.to_le_bytes());
    body.extend_from_slice(&2f32.to_le_bytes());
    body.extend_from_slice(&2u32.to_le_bytes());
    body.extend_from_slice(b"hi");
    fuzz("v2 binary request", &[&body], |input| {
        let Some((&n, rest)) = input.split_first() else { return };
        let n = (n as usize).min(rest.len());
        let _ = request::decode(&rest[..n], Bytes::copy_from_slice(&rest[n..]));
    });
}

#[test]
fn bytes_elements() {
    let mut seed = Vec::new();
    for s in ["hello", "", "wörld"] {
        seed.extend_from_slice(&(s.len() as u32).to_le_bytes());
        seed.extend_from_slice(s.as_bytes());
    }
    fuzz("BYTES elements", &[&seed], |input| {
        let _ = tensor::utf8_elements(input, "input `T`");
    });
}

#[test]
fn object_puts() {
    let seeds: &[&[u8]] = &[
        br#"{"datatype":"FP32","shape":[2,2],"data":[1,2,3,4],"parameters":{"ttl_s":5}}"#,
        br#"{"datatype":"INT64","shape":[3],"data":[1,-9223372036854775808,9223372036854775807]}"#,
        br#"{"datatype":"FP16","shape":[1],"parameters":{"binary_data_size":2}}"#,
    ];
    fuzz("object put", seeds, |input| {
        let Ok(object) = v2::from_slice::<ObjectTensor>(input) else {
            return;
        };
        let Ok(meta) = tensor::object_meta(&object, "object") else {
            return;
        };
        let _ = tensor::carried(object.data.as_ref(), object.parameters.as_ref());
        let _ = tensor::json_bytes(object.data.as_ref(), &meta, "object");
    });
}

#[test]
fn task_arguments() {
    let seeds: &[&[u8]] = &[
        br#"{"args":[{"object_ref":"abababababababababababababababab"},{"datatype":"FP32","shape":[2,1],"data":[1,2]}],"options":{"num_cpus":0.5,"ttl_s":60}}"#,
        br#"{"args":[{"datatype":"INT32","shape":[],"data":[7]}]}"#,
    ];
    fuzz("task arguments", seeds, |input| {
        let Ok(request) = v2::from_slice::<TaskRequest>(input) else {
            return;
        };
        for a in request.args {
            if let Ok(ArgumentValue::Tensor(t)) = a.resolve() {
                let _ = tensor::object_array(&t, "args[0]");
            }
        }
    });
}
