//! CUDA 13's own libraries without a card: NVRTC compiles every kernel source Prism has,
//! through Prism's compile function with its options, for A100 (`sm_80`) and H100 / H200
//! (`sm_90`), to PTX and to CUBIN, without a warning; each kernel's registers and shared
//! memory (read from its CUBIN) fit the blocks its largest launches use; the start-up
//! probe finds NVRTC and cuBLAS by the file names this build's cudarc looks for.
//!
//! `scripts/test` installs NVIDIA's CUDA 13 wheels (tests/cuda/requirements.txt), puts
//! their libraries on `LD_LIBRARY_PATH` and sets `PRISM_REQUIRE_CUDA_LIBS=1`: then a
//! library not found is a failure. Elsewhere the tests say they were skipped.

use std::collections::HashMap;

use object::{Object, ObjectSection};
use prism_kernels::cuda::launch::{ARCHITECTURES, Usage};
use prism_kernels::cuda::mirror::Mirror;
use prism_kernels::cuda::source::{self, Kernel, Output, SOURCES};
use prism_kernels::cuda::{GpuEncoder, GpuModel, Library, Precision, libraries, probe};
use prism_kernels::encoder::{Encoder, Overrides};
use prism_kernels::testing::encoder_fixtures;

fn required() -> bool {
    std::env::var("PRISM_REQUIRE_CUDA_LIBS").as_deref() == Ok("1")
}

fn library(name: &str) -> Library {
    libraries()
        .into_iter()
        .find(|l| l.name == name)
        .expect("a known library")
}

/// Whether NVRTC can be used here; a failure when it is required.
fn nvrtc_available() -> bool {
    if library("nvrtc").file.is_some() {
        return true;
    }
    assert!(!required(), "PRISM_REQUIRE_CUDA_LIBS=1, but libnvrtc was not found");
    eprintln!("skipped: libnvrtc is not on the library path");
    false
}

#[test]
fn the_probe_finds_the_cuda_13_libraries_by_their_file_names() {
    if !required() {
        eprintln!("skipped: PRISM_REQUIRE_CUDA_LIBS is not set");
        return;
    }
    // This build's cudarc features (cuda-13000) look for `lib<name>.so.13` among others:
    // the wheels ship exactly those files, so a renamed library fails here.
    for name in ["nvrtc", "cublas"] {
        let file = library(name).file.unwrap_or_else(|| panic!("lib{name} not found"));
        assert!(
            file.ends_with(&format!("/lib{name}.so.13")),
            "lib{name} was loaded from {file}"
        );
    }
    let (major, _) = source::nvrtc_version().expect("NVRTC answers its version");
    assert_eq!(major, 13, "the NVRTC found is not CUDA 13's");
    // No driver on this machine: the probe says so, first, and never panics.
    if library("cuda").file.is_none() {
        let why = probe().expect_err("no driver, no device");
        assert!(why.contains("libcuda"), "{why}");
    }
}

/// Registers and static shared memory of each kernel in a CUBIN, from its ELF file: the
/// `.nv.info` section's `EIATTR_REGCOUNT` records (attribute 0x2f: the kernel's symbol
/// index, then its register count; before CUDA 13 the count was also the top byte of
/// `.text.<kernel>`'s `sh_info`, which this checks where present), and the size of
/// `.nv.shared.<kernel>`, the block's static shared memory.
fn usage_of(cubin: &[u8]) -> HashMap<String, Usage> {
    use object::ObjectSymbol;
    let elf = object::read::elf::ElfFile64::<object::Endianness>::parse(cubin).expect("a CUBIN is an ELF file");
    let mut usage: HashMap<String, Usage> = HashMap::new();
    let mut legacy = HashMap::new();
    for section in elf.sections() {
        let name = section.name().unwrap_or_default();
        if let Some(kernel) = name.strip_prefix(".text.") {
            let info = section.elf_section_header().sh_info.get(elf.endian());
            legacy.insert(kernel.to_owned(), info >> 24);
        } else if let Some(kernel) = name.strip_prefix(".nv.shared.") {
            usage.entry(kernel.to_owned()).or_default().static_shared = section.size() as u32;
        } else if name == ".nv.info" {
            let data = section.data().expect("section data");
            let mut at = 0;
            // Records: format byte, attribute byte, then for format 0x04 (EIFMT_SVAL) a
            // 16-bit size and that many bytes; every other format has 16 bits inline.
            while at + 4 <= data.len() {
                let (format, attribute) = (data[at], data[at + 1]);
                let size = u16::from_le_bytes([data[at + 2], data[at + 3]]) as usize;
                let body = at + 4;
                at = if format == 0x04 { body + size } else { body };
                if format == 0x04 && attribute == 0x2f && size == 8 {
                    let word = |i: usize| u32::from_le_bytes(data[body + i..body + i + 4].try_into().unwrap());
                    let symbol = elf
                        .symbol_by_index(object::SymbolIndex(word(0) as usize))
                        .expect("EIATTR_REGCOUNT names a symbol");
                    let kernel = symbol.name().expect("a symbol name").to_owned();
                    usage.entry(kernel).or_default().registers = word(4);
                }
            }
        }
    }
    for (kernel, registers) in legacy {
        if registers != 0 {
            let u = usage.entry(kernel.clone()).or_default();
            assert!(
                u.registers == 0 || u.registers == registers,
                "{kernel}: .nv.info says {} registers, sh_info {registers}",
                u.registers
            );
            u.registers = registers;
        }
    }
    usage
}

#[test]
fn every_kernel_compiles_for_sm_80_and_sm_90_without_a_warning() {
    if !nvrtc_available() {
        return;
    }
    let mut compiled = 0;
    for source in SOURCES {
        for limits in &ARCHITECTURES {
            let arch = limits.arch;
            let ptx = source::compile(source, arch, Output::Ptx).unwrap_or_else(|e| panic!("{e}"));
            assert!(
                ptx.log.is_empty(),
                "{} for compute_{arch}: NVRTC says:\n{}",
                source.name,
                ptx.log
            );
            let text = String::from_utf8_lossy(&ptx.image);
            assert!(
                text.contains(&format!(".target sm_{arch}")),
                "{} is not PTX for sm_{arch}",
                source.name
            );
            let cubin = source::compile(source, arch, Output::Cubin).unwrap_or_else(|e| panic!("{e}"));
            assert!(
                cubin.log.is_empty(),
                "{} for sm_{arch}: NVRTC says:\n{}",
                source.name,
                cubin.log
            );
            let usage = usage_of(&cubin.image);
            for kernel in source.kernels() {
                assert!(
                    text.contains(&format!(".entry {}(", kernel.name())),
                    "{} has no PTX entry for sm_{arch}",
                    kernel.name()
                );
                let u = usage
                    .get(kernel.name())
                    .unwrap_or_else(|| panic!("{} is not in the sm_{arch} CUBIN", kernel.name()));
                assert!(u.registers > 0, "{}: no register count read", kernel.name());
                eprintln!(
                    "sm_{arch} {:<16} {:>3} registers, {:>5} bytes shared, block {}",
                    kernel.name(),
                    u.registers,
                    u.static_shared,
                    kernel.block()
                );
                compiled += 1;
            }
        }
    }
    assert_eq!(compiled, Kernel::ALL.len() * ARCHITECTURES.len());
}

#[test]
fn the_largest_launches_fit_what_each_kernel_uses() {
    if !nvrtc_available() {
        return;
    }
    let mlp = GpuModel::on(&prism_kernels::builtin::mlp(), Mirror::new(), Precision::Fp16).unwrap();
    let mut plans = vec![mlp.plan(1).unwrap(), mlp.plan(1 << 16).unwrap()];
    for dir in encoder_fixtures() {
        let encoder = Encoder::load(&dir, &Overrides::default()).unwrap();
        let bert = GpuEncoder::on(&encoder, Mirror::new(), Precision::Bf16).unwrap();
        plans.push(bert.plan(1, 1).unwrap());
        plans.push(bert.plan(256, 512).unwrap());
    }
    for limits in &ARCHITECTURES {
        let mut usage = HashMap::new();
        for source in SOURCES {
            let cubin = source::compile(source, limits.arch, Output::Cubin).unwrap();
            usage.extend(usage_of(&cubin.image));
        }
        for plan in &plans {
            let failures = plan.check_launches(limits, |k: Kernel| usage[k.name()]);
            assert!(failures.is_empty(), "{failures:#?}");
        }
    }
}

#[test]
fn a_source_nvrtc_refuses_is_an_error_with_its_log() {
    if !nvrtc_available() {
        return;
    }
    static BROKEN: source::Source = source::Source {
        name: "broken.cu",
        code: "extern \"C\" __global__ void k(float* y) { y[0] = undefined_name; }",
    };
    let err = source::compile(&BROKEN, 90, Output::Cubin).expect_err("does not compile");
    assert!(err.0.contains("undefined_name") && err.0.contains("broken.cu"), "{err}");
    // A warning is reported in the log, which the test above requires to be empty.
    static WARNS: source::Source = source::Source {
        name: "warns.cu",
        code: "extern \"C\" __global__ void k(float* y) { int unused = 1; y[0] = 0.0f; }",
    };
    let ok = source::compile(&WARNS, 90, Output::Ptx).expect("compiles");
    assert!(
        ok.log.contains("unused"),
        "NVRTC's warnings reach the log: {:?}",
        ok.log
    );
}
