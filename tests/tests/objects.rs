//! The object store, refs in inference, async work, wait and tasks, through real HTTP.

use std::collections::HashMap;
use std::time::Duration;

use prism_client::v2::{InferInput, InferRequest, TensorData};
use prism_client::{DType, FaultInjection, ObjectRef, TaskArg, TaskOptions, Tensor};
use prism_tests::{TestServer, celsius, config, metric, one_row};
use rand::{Rng, SeedableRng};
use serde_json::json;

/// celsius behind a replica that takes `delay_ms` per batch (0: none), plus the store.
fn server_config(dir: &std::path::Path, store_memory: u64, delay_ms: u64) -> prism_config::Config {
    let faults = if delay_ms > 0 {
        format!("[deployments.fault_injection]\ndelay_ms = {delay_ms}\ndelay_rate = 1.0\n")
    } else {
        String::new()
    };
    config(
        &format!(
            r#"
[object_store]
object_store_memory = {store_memory}
spill_dir = "spill"

{}"#,
            celsius(
                "celsius",
                &format!("[deployments.batching]\nmax_batch_size = 8\nbatch_wait_timeout_ms = 1\n{faults}")
            )
        ),
        dir,
    )
}

async fn start(store_memory: u64, delay_ms: u64) -> (TestServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(server_config(dir.path(), store_memory, delay_ms)).await;
    (server, dir)
}

fn status(e: prism_client::ClientError) -> u16 {
    e.status().unwrap_or_else(|| panic!("expected an HTTP error, got {e}"))
}

#[tokio::test]
async fn put_get_meta_delete_round_trip_every_dtype() {
    let (s, _dir) = start(64 << 20, 0).await;
    let c = &s.client;
    let tensors = [
        Tensor::fp32(vec![2, 3], vec![1.5, -2.0, 3.25, f32::MAX, 0.0, -0.0]),
        Tensor {
            datatype: DType::I64,
            shape: vec![3],
            data: TensorData::Integers(vec![i64::MIN as i128, 0, i64::MAX as i128]),
        },
        Tensor {
            datatype: DType::U8,
            shape: vec![2, 2],
            data: TensorData::Integers(vec![0, 1, 254, 255]),
        },
        Tensor {
            datatype: DType::F64,
            shape: vec![1],
            data: TensorData::Numbers(vec![std::f64::consts::PI]),
        },
        Tensor {
            datatype: DType::Bool,
            shape: vec![2],
            data: TensorData::Bools(vec![true, false]),
        },
        Tensor::scalar(7.0),
    ];
    for t in &tensors {
        let r = c.put(t).await.unwrap();
        assert_eq!(r.0.len(), 32);
        assert_eq!(&c.get(&r, None).await.unwrap(), t, "binary get of {:?}", t.datatype);
        // The JSON form of the same object.
        let j = s.get_json(&format!("/v2/objects/{r}")).await;
        assert_eq!(j["datatype"], t.datatype.to_string());
        assert_eq!(j["shape"], json!(t.shape));
        let meta = c.object_meta(&r).await.unwrap();
        assert_eq!(meta["state"], "ready");
        assert_eq!(
            meta["bytes"],
            t.shape.iter().product::<usize>() * t.datatype.size().unwrap()
        );
        c.delete(&r).await.unwrap();
        assert_eq!(status(c.get(&r, None).await.unwrap_err()), 404);
        assert_eq!(status(c.delete(&r).await.unwrap_err()), 404);
    }

    // A JSON put, and refusals that name the field.
    let http = reqwest::Client::new();
    let put = |body: serde_json::Value| http.post(format!("{}/v2/objects", s.url)).json(&body).send();
    // A JSON put that must be stored, read back through the client.
    let stored = |body: serde_json::Value| {
        let put = put(body);
        async move {
            let ok = put.await.unwrap();
            assert_eq!(ok.status(), 201);
            let r: serde_json::Value = ok.json().await.unwrap();
            c.get(&ObjectRef(r["object_ref"].as_str().unwrap().into()), None)
                .await
                .unwrap()
        }
    };
    let got = stored(json!({"datatype": "FP32", "shape": [2], "data": [1, 2]})).await;
    assert_eq!(got.to_f32(), vec![1.0, 2.0]);
    // JSON integers into integer types: exact, or refused, never rounded or saturated.
    let got =
        stored(json!({"datatype": "INT64", "shape": [3], "data": [16777217, -3, 9_007_199_254_740_993u64]})).await;
    assert_eq!(
        got.data,
        TensorData::Integers(vec![16_777_217, -3, 9_007_199_254_740_993])
    );
    let got = stored(json!({"datatype": "UINT64", "shape": [1], "data": [u64::MAX]})).await;
    assert_eq!(got.data, TensorData::Integers(vec![u64::MAX.into()]));
    for (body, says) in [
        (
            json!({"datatype": "UINT8", "shape": [1], "data": [300]}),
            "300 is out of range for UINT8",
        ),
        (
            json!({"datatype": "INT32", "shape": [1], "data": [1.5]}),
            "1.5 is not a whole number",
        ),
        (
            json!({"datatype": "INT64", "shape": [1], "data": [1e17]}),
            "may not be the number written",
        ),
        (
            json!({"datatype": "INT64", "shape": [2], "data": [9_007_199_254_740_993u64, 2.0]}),
            "9007199254740992 may not be the number written",
        ),
        (
            json!({"datatype": "FP32", "shape": [3], "data": [1, 2]}),
            "needs 3 values, got 2",
        ),
        (
            json!({"datatype": "BYTES", "shape": [1], "data": ["a"]}),
            "BYTES cannot be stored",
        ),
        (
            json!({"datatype": "FP32", "shape": [-1], "data": [1]}),
            "negative dimension",
        ),
        (
            json!({"datatype": "FP32", "shape": [1], "data": [1], "parameters": {"ttl_s": 0}}),
            "ttl_s",
        ),
    ] {
        let answer = put(body).await.unwrap();
        assert_eq!(answer.status(), 400);
        let text = answer.text().await.unwrap();
        assert!(text.contains(says), "{text}");
    }
    let bad = reqwest::get(format!("{}/v2/objects/not-a-ref", s.url)).await.unwrap();
    assert_eq!(bad.status(), 400);
    let unknown = reqwest::get(format!("{}/v2/objects/{}", s.url, "0".repeat(32)))
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    s.stop().await.unwrap();
}

#[tokio::test]
async fn spilling_keeps_every_object_readable_and_byte_identical() {
    // 1 MiB of memory, 12 objects of 256 KiB: most of them live on disk at any time.
    let (s, dir) = start(1 << 20, 0).await;
    let c = &s.client;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut stored = Vec::new();
    for _ in 0..12 {
        let values: Vec<f32> = (0..65_536).map(|_| rng.random()).collect();
        let t = Tensor::fp32(vec![256, 256], values);
        stored.push((c.put(&t).await.unwrap(), t));
    }
    let spilled = std::fs::read_dir(dir.path().join("spill")).unwrap().count();
    assert!(spilled >= 8, "only {spilled} spill files");
    let states: Vec<String> = futures::future::join_all(stored.iter().map(|(r, _)| c.object_meta(r)))
        .await
        .into_iter()
        .map(|m| m.unwrap()["state"].as_str().unwrap().to_owned())
        .collect();
    assert!(states.iter().any(|s| s == "spilled"), "{states:?}");
    // Read them all, twice, in an order that forces spilling and restoring.
    for round in 0..2 {
        for (r, t) in stored.iter().rev() {
            assert_eq!(&c.get(r, None).await.unwrap(), t, "round {round}");
        }
    }
    let metrics = c.metrics().await.unwrap();
    let value = |name: &str| metric(&metrics, name).unwrap_or_else(|| panic!("{name} missing"));
    assert!(value("prism_object_store_spills_total") >= 8.0);
    assert!(value("prism_object_store_restores_total") >= 8.0);
    assert!(value("prism_object_store_memory_bytes") <= (1 << 20) as f64);

    // Bigger than the whole store (the default object_store.max_object_bytes): 413 before
    // a byte is stored, and nothing else is harmed.
    let huge = Tensor::fp32(vec![300_000], vec![0.0; 300_000]);
    let err = c.put(&huge).await.unwrap_err();
    assert!(err.to_string().contains("object_store.max_object_bytes"), "{err}");
    assert_eq!(status(err), 413);
    for (r, t) in &stored {
        assert_eq!(&c.get(r, None).await.unwrap(), t);
    }
    s.stop().await.unwrap();
    assert!(
        std::fs::read_dir(dir.path().join("spill")).unwrap().next().is_none(),
        "spill files are removed with the store"
    );
}

#[tokio::test]
async fn a_delete_racing_a_queued_request_does_not_fail_it() {
    // Every batch takes 300 ms: the second request queues behind the first.
    let (s, _dir) = start(64 << 20, 300).await;
    let c = s.client.clone();
    let x = c.put(&Tensor::fp32(vec![1, 1], vec![100.0])).await.unwrap();
    let busy = tokio::spawn({
        let c = c.clone();
        async move { c.infer("celsius", &one_row(0.0)).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let request = InferRequest {
        inputs: vec![InferInput::object_ref("INPUT0", &x.0)],
        ..Default::default()
    };
    let queued = tokio::spawn({
        let c = c.clone();
        async move { c.infer("celsius", &request).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    c.delete(&x).await.unwrap();
    assert_eq!(status(c.get(&x, None).await.unwrap_err()), 404);
    let answer = queued.await.unwrap().unwrap();
    assert_eq!(answer.outputs[0].data.as_ref().unwrap().to_f32().unwrap(), vec![212.0]);
    busy.await.unwrap().unwrap();
    s.stop().await.unwrap();
}

#[tokio::test]
async fn refs_chain_inferences_and_async_answers_202() {
    let (s, _dir) = start(64 << 20, 0).await;
    let c = &s.client;
    // Ten requests over one object: it is sent once.
    let x = c.put(&Tensor::fp32(vec![3, 1], vec![0.0, 100.0, -40.0])).await.unwrap();
    let by_ref = InferRequest {
        inputs: vec![InferInput::object_ref("INPUT0", &x.0)],
        ..Default::default()
    };
    for _ in 0..10 {
        let a = c.infer("celsius", &by_ref).await.unwrap();
        assert_eq!(
            a.outputs[0].data.as_ref().unwrap().to_f32().unwrap(),
            vec![32.0, 212.0, -40.0]
        );
    }
    // The output stays on the server and feeds the next call.
    let refs = c.infer_to_refs("celsius", &by_ref, &["OUTPUT0"]).await.unwrap();
    let f = refs[0].1.clone();
    let chained = InferRequest {
        inputs: vec![InferInput::object_ref("INPUT0", &f.0)],
        ..Default::default()
    };
    let twice = c.infer("celsius", &chained).await.unwrap();
    let got = twice.outputs[0].data.as_ref().unwrap().to_f32().unwrap();
    assert_eq!(got.len(), 3, "{got:?}");
    for (g, w) in got.iter().zip([89.6f32, 413.6, -40.0]) {
        assert!((g - w).abs() < 1e-3, "{got:?}");
    }

    // Async: 202 with a ref at once; chaining a pending ref waits for it.
    let body = json!({"inputs": [{"name": "INPUT0", "shape": [1, 1], "datatype": "FP32", "data": [100]}], "parameters": {"async": true}});
    let answer = reqwest::Client::new()
        .post(format!("{}/v2/models/celsius/infer", s.url))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 202);
    let a: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(a["outputs"][0]["shape"], json!([1, 1]));
    let pending = ObjectRef(a["outputs"][0]["parameters"]["object_ref"].as_str().unwrap().into());
    let next = c
        .infer_async(
            "celsius",
            &InferRequest {
                inputs: vec![InferInput::object_ref("INPUT0", &pending.0)],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let out = c.get(&next[0].1, Some(Duration::from_secs(10))).await.unwrap();
    assert!((out.to_f32()[0] - (212.0 * 1.8 + 32.0)).abs() < 1e-3);

    // A ref of the wrong shape, and an unknown one, are refused with the reason.
    let wide = c.put(&Tensor::fp32(vec![1, 2], vec![1.0, 2.0])).await.unwrap();
    let err = c
        .infer(
            "celsius",
            &InferRequest {
                inputs: vec![InferInput::object_ref("INPUT0", &wide.0)],
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("expects [-1, 1]"), "{err}");
    let unknown = InferRequest {
        inputs: vec![InferInput::object_ref("INPUT0", &"a".repeat(32))],
        ..Default::default()
    };
    assert_eq!(status(c.infer("celsius", &unknown).await.unwrap_err()), 404);
    s.stop().await.unwrap();
}

#[tokio::test]
async fn tasks_compute_chain_and_wait_like_ray() {
    let (s, _dir) = start(64 << 20, 0).await;
    let c = &s.client;
    let a = c
        .put(&Tensor::fp32(vec![2, 3], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]))
        .await
        .unwrap();
    let b = Tensor::fp32(vec![3, 2], vec![1.0, 0.0, 0.0, 1.0, 1.0, 1.0]);
    let opts = TaskOptions::default();
    let m = c.task("matmul", [TaskArg::from(&a), b.into()], &opts).await.unwrap();
    assert_eq!(
        c.get(&m, None).await.unwrap(),
        Tensor::fp32(vec![2, 2], vec![4.0, 5.0, 10.0, 11.0])
    );
    // Chaining: square(m) + m, never leaving the server.
    let sq = c.task("square", [TaskArg::from(&m)], &opts).await.unwrap();
    let sum = c
        .task("add", [TaskArg::from(&sq), TaskArg::from(&m)], &opts)
        .await
        .unwrap();
    let total = c.task("sum", [TaskArg::from(&sum)], &opts).await.unwrap();
    let v = c.get(&total, None).await.unwrap();
    assert_eq!(v.shape, Vec::<usize>::new());
    assert_eq!(v.to_f32(), vec![(16 + 4 + 25 + 5 + 100 + 10 + 121 + 11) as f32]);

    // wait: slow tasks (300 ms each) are not ready after 20 ms; all are after enough.
    let slow = TaskOptions {
        num_cpus: Some(0.25),
        fault_injection: Some(FaultInjection {
            delay_ms: Some(300.0),
            delay_rate: Some(1.0),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut refs = Vec::new();
    for i in 0..3 {
        refs.push(
            c.task("square", [Tensor::scalar(i as f32).into()], &slow)
                .await
                .unwrap(),
        );
    }
    let (ready, not_ready) = c.wait(&refs, 1, Some(Duration::from_millis(20))).await.unwrap();
    assert!(ready.is_empty());
    assert_eq!(not_ready, refs);
    let (ready, not_ready) = c.wait(&refs, 2, Some(Duration::from_secs(20))).await.unwrap();
    assert_eq!(ready.len(), 2);
    assert_eq!(not_ready.len(), 1);
    let (ready, _) = c.wait(&refs, 3, None).await.unwrap();
    assert_eq!(ready.len(), 3);
    // A timeout too large for the clock is no deadline, not a crash.
    let (ready, _) = c.wait(&refs, 3, Some(Duration::from_millis(u64::MAX))).await.unwrap();
    assert_eq!(ready.len(), 3);
    // ray.get with a timeout on something that takes longer: 504.
    let later = c.task("square", [Tensor::scalar(3.0).into()], &slow).await.unwrap();
    assert_eq!(
        status(c.get(&later, Some(Duration::from_millis(10))).await.unwrap_err()),
        504
    );
    assert_eq!(c.get(&later, None).await.unwrap().to_f32(), vec![9.0]);

    // Refusals.
    let err = c.task("nope", [Tensor::scalar(1.0).into()], &opts).await.unwrap_err();
    assert!(err.to_string().contains("unknown op `nope`"), "{err}");
    let err = c
        .task(
            "add",
            [
                Tensor::fp32(vec![2], vec![1.0, 2.0]).into(),
                Tensor::fp32(vec![3], vec![0.0; 3]).into(),
            ],
            &opts,
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("cannot be broadcast"), "{err}");
    let greedy = TaskOptions {
        num_cpus: Some(1e5),
        ..Default::default()
    };
    let err = c
        .task("square", [Tensor::scalar(1.0).into()], &greedy)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("num_cpus = 100000 can never be met"), "{err}");
    let split = TaskOptions {
        num_gpus: Some(1.5),
        ..Default::default()
    };
    let err = c
        .task("square", [Tensor::scalar(1.0).into()], &split)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("options.num_gpus: must be a fraction up to 1 (like 0.25) or a whole number of GPUs, got 1.5"),
        "{err}"
    );
    let unknown = ObjectRef("b".repeat(32));
    assert_eq!(
        status(c.task("square", [unknown.into()], &opts).await.unwrap_err()),
        404
    );
    let err = c.wait(&[a.clone(), a.clone()], 1, None).await.unwrap_err();
    assert!(err.to_string().contains("listed twice"), "{err}");
    s.stop().await.unwrap();
}

#[tokio::test]
async fn retries_with_retry_exceptions_succeed_and_are_counted() {
    let (s, _dir) = start(64 << 20, 0).await;
    let c = &s.client;
    // The seed's incorrect_square: fails with InjectedFault 90% of the time.
    let flaky = FaultInjection {
        error_rate: Some(0.9),
        ..Default::default()
    };
    let retried = TaskOptions {
        num_cpus: Some(0.0),
        max_retries: Some(400),
        retry_exceptions: vec!["InjectedFault".into()],
        fault_injection: Some(flaky.clone()),
        ..Default::default()
    };
    let mut refs = Vec::new();
    for _ in 0..10 {
        refs.push(c.task("square", [Tensor::scalar(4.0).into()], &retried).await.unwrap());
    }
    for r in &refs {
        assert_eq!(c.get(r, None).await.unwrap().to_f32(), vec![16.0]);
    }
    let metrics = c.metrics().await.unwrap();
    let retries = metric(
        &metrics,
        "prism_task_retries_total{op=\"square\",reason=\"InjectedFault\"}",
    )
    .expect("retries are counted");
    assert!(retries >= 10.0, "{retries}");

    // Without retry_exceptions an application error is not retried: the caller sees it
    // with the attempt count, and a task over the failed object fails with that cause.
    let no_retry = TaskOptions {
        fault_injection: Some(FaultInjection {
            error_rate: Some(1.0),
            ..Default::default()
        }),
        ..Default::default()
    };
    let failed = c.task("square", [Tensor::scalar(4.0).into()], &no_retry).await.unwrap();
    let err = c.get(&failed, None).await.unwrap_err();
    assert_eq!(status(err), 500);
    let meta = c.object_meta(&failed).await.unwrap();
    assert_eq!(meta["state"], "failed");
    assert_eq!(meta["error"]["kind"], "InjectedFault");
    assert_eq!(meta["error"]["attempts"], 1);
    let downstream = c
        .task(
            "add",
            [TaskArg::from(&failed), Tensor::scalar(1.0).into()],
            &TaskOptions::default(),
        )
        .await
        .unwrap();
    let err = c.get(&downstream, None).await.unwrap_err().to_string();
    assert!(err.contains("argument 0") && err.contains("InjectedFault"), "{err}");
    s.stop().await.unwrap();
}

#[tokio::test]
async fn resources_show_what_tasks_hold() {
    let (s, _dir) = start(64 << 20, 0).await;
    let c = &s.client;
    let before = s.get_json("/v2/resources").await;
    assert_eq!(before["total"]["object_store_memory"], 64 << 20);
    // The replicas hold no CPU here: tasks have all of the machine's.
    let cpus = before["available"]["CPU"].as_f64().unwrap();
    assert_eq!(before["total"]["CPU"].as_f64().unwrap(), cpus);
    let slow = TaskOptions {
        num_cpus: Some(0.5),
        fault_injection: Some(FaultInjection {
            delay_ms: Some(400.0),
            delay_rate: Some(1.0),
            ..Default::default()
        }),
        ..Default::default()
    };
    let r = c.task("relu", [Tensor::scalar(-1.0).into()], &slow).await.unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let during = s.get_json("/v2/resources").await;
    assert!(
        (during["available"]["CPU"].as_f64().unwrap() - (cpus - 0.5)).abs() < 1e-6,
        "{during}"
    );
    assert_eq!(c.get(&r, None).await.unwrap().to_f32(), vec![0.0]);
    let after = s.get_json("/v2/resources").await;
    assert_eq!(after["available"]["CPU"], before["available"]["CPU"]);
    s.stop().await.unwrap();
}

/// A seeded random sequence of puts, gets, deletes and inferences, checked against a
/// plain map of what the store should hold. The store is small, so it spills as it goes.
#[tokio::test]
async fn random_operations_match_a_model_of_the_store() {
    let (s, _dir) = start(1 << 20, 0).await;
    let c = &s.client;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5EED);
    let mut model: HashMap<ObjectRef, Tensor> = HashMap::new();
    let mut gone: Vec<ObjectRef> = Vec::new();
    for step in 0..300 {
        let keys: Vec<ObjectRef> = model.keys().cloned().collect();
        match rng.random_range(0..10) {
            0..=3 => {
                let rows = rng.random_range(1..=8usize);
                let cols = if rng.random_bool(0.5) {
                    1
                } else {
                    rng.random_range(1..20_000usize)
                };
                let t = Tensor::fp32(vec![rows, cols], (0..rows * cols).map(|_| rng.random()).collect());
                let r = c.put(&t).await.unwrap_or_else(|e| panic!("step {step}: put: {e}"));
                assert!(!model.contains_key(&r), "refs are never reused");
                model.insert(r, t);
            }
            4..=5 if !keys.is_empty() => {
                let r = &keys[rng.random_range(0..keys.len())];
                assert_eq!(&c.get(r, None).await.unwrap(), &model[r], "step {step}");
            }
            6 if !keys.is_empty() => {
                let r = keys[rng.random_range(0..keys.len())].clone();
                c.delete(&r).await.unwrap();
                model.remove(&r);
                gone.push(r);
            }
            7 if !gone.is_empty() => {
                let r = &gone[rng.random_range(0..gone.len())];
                assert_eq!(status(c.get(r, None).await.unwrap_err()), 404, "step {step}");
            }
            8 | 9 if !keys.is_empty() => {
                let r = &keys[rng.random_range(0..keys.len())];
                let t = &model[r];
                let request = InferRequest {
                    inputs: vec![InferInput::object_ref("INPUT0", &r.0)],
                    ..Default::default()
                };
                let answer = c.infer("celsius", &request).await;
                if t.shape[1] == 1 {
                    let got = answer.unwrap().outputs[0].data.as_ref().unwrap().to_f32().unwrap();
                    let want: Vec<f32> = t.to_f32().iter().map(|x| x * 1.8 + 32.0).collect();
                    assert_eq!(got.len(), want.len(), "step {step}");
                    for (g, w) in got.iter().zip(&want) {
                        assert!((g - w).abs() <= 1e-4 * (1.0 + w.abs()), "step {step}: {g} vs {w}");
                    }
                } else {
                    assert_eq!(status(answer.unwrap_err()), 400, "step {step}: wide object");
                }
            }
            _ => {}
        }
    }
    for (r, t) in &model {
        assert_eq!(&c.get(r, None).await.unwrap(), t);
    }
    s.stop().await.unwrap();
}
