//! Every shader family, as shipped and in the specialisations the launchers make, is parsed and
//! validated by naga (wgpu's own compiler) and emitted as SPIR-V (Vulkan), MSL (Metal),
//! HLSL (DX12) and GLSL (OpenGL ES 3.1), so a shader that would break on another platform fails
//! here. Each entry point's workgroup memory is checked against WebGPU's 16 KiB default.

use crate::common::*;
use gomaflow_wgpu::gpu::shaders::{
    Bind, Binding, KernelSpec, Shader, bindings, validate, workgroup_bytes,
};

/// Specialisations covering what the configs use (channels 1..32, taps of Nd = 1..4, every
/// activation and epilogue, workgroup sizes 32..256).
fn variants(shader: Shader) -> Vec<Vec<(&'static str, u32)>> {
    let mut v = vec![vec![]];
    match shader {
        Shader::Conv => {
            v.push(vec![
                ("CIN", 1),
                ("COUT", 8),
                ("TAPS", 9),
                ("ACT", 1),
                ("IN_MASK", 1),
                ("MODE", 2),
            ]);
            v.push(vec![
                ("CIN", 8),
                ("COUT", 2),
                ("TAPS", 81),
                ("ACT", 2),
                ("MODE", 1),
                ("ACT_IN", 1),
            ]);
            v.push(vec![
                ("CIN", 32),
                ("COUT", 32),
                ("TAPS", 27),
                ("ACT", 0),
                ("WG", 128),
            ]);
            v.push(vec![("CIN", 2), ("COUT", 3), ("TAPS", 3), ("MODE", 0)]);
            // A combinational branch: 3^r taps, adding its input gradient.
            v.push(vec![
                ("CIN", 8),
                ("COUT", 8),
                ("TAPS", 3),
                ("ACT", 0),
                ("MODE", 3),
            ]);
            // Combinational stages: branches kept as signs (one word and two), as outputs
            // (tanh), averaged before the activation; their input gradients to branches.
            for (br, cout, act, signs, after, nb) in [
                (3u32, 8u32, 1, 1, 1, 4),
                (6, 8, 1, 1, 1, 1),
                (3, 2, 2, 0, 1, 4),
                (4, 8, 1, 0, 0, 2),
            ] {
                v.push(vec![
                    ("CIN", 8),
                    ("COUT", cout),
                    ("TAPS", 3),
                    ("BR", br),
                    ("WSTRIDE", 256),
                    ("ACT", act),
                    ("AFTER", after),
                    ("KEEP", after),
                    ("SIGNS", signs),
                    ("WORDS", (br * cout).div_ceil(32)),
                    ("NB", nb),
                    ("MODE", 4),
                    ("SIGNS_IN", after),
                    ("ACT_IN", 1),
                ]);
            }
        }
        Shader::Combi => {
            // C(Nd, r) branches for every Nd, r; both places of the activation.
            for br in [2, 3, 4, 6] {
                for (act, after) in [(1, 1), (2, 1), (1, 0), (2, 0), (0, 0)] {
                    v.push(vec![("BR", br), ("ACT", act), ("AFTER", after)]);
                }
            }
        }
        Shader::Coupling => {
            for wg in [32, 64, 128, 256] {
                v.push(vec![("WG", wg), ("ACT", 0)]);
            }
        }
        Shader::Spline => {
            // Two bins to many, both final activations.
            for (wg, k, act) in [(32, 2, 0), (64, 8, 2), (256, 16, 0), (128, 32, 2)] {
                v.push(vec![("WG", wg), ("K", k), ("ACT", act)]);
            }
        }
        Shader::Z2 => {
            for act in [0, 2] {
                v.push(vec![("WG", 64), ("ACT", act)]);
            }
        }
        Shader::CouplingLayer => {
            // The tutorial (2D L 8, [8, 8]) with 1 and 4 sites per thread; one hidden layer
            // (no HID -> HID stage) in 4D with k = 3 (81 taps); three hidden layers on 10 x 10;
            // training and inference, both final activations; symmetrised. WSPAN is the
            // layer's parameter span (the backward's workgroup memory depends on it).
            v.push(vec![
                ("V", 64),
                ("TAPS", 9),
                ("HID", 8),
                ("NHID", 2),
                ("TRAIN", 1),
                ("SPT", 4),
                ("WG", 16),
            ]);
            v.push(vec![("TRAIN", 1), ("Z2", 1), ("TPT", 3)]);
            v.push(vec![("Z2", 1), ("SPT", 2), ("WG", 32)]);
            v.push(vec![
                ("V", 16),
                ("TAPS", 81),
                ("HID", 2),
                ("NHID", 1),
                ("HLEN", 32),
                ("WG", 16),
                ("ACT_OUT", 0),
                ("WLEN", 130),
                ("W_MID", 0),
                ("W_MID_STRIDE", 0),
                ("W_OUT", 192),
                ("WSPAN", 518),
            ]);
            v.push(vec![
                ("V", 100),
                ("TAPS", 9),
                ("HID", 8),
                ("NHID", 3),
                ("HLEN", 1600),
                ("WG", 64),
                ("TRAIN", 1),
                ("WLEN", 389),
                ("W_MID", 128),
                ("W_MID_STRIDE", 640),
                ("W_OUT", 1408),
                ("WSPAN", 1554),
            ]);
            // Combinational: 3D L 4, 3C1 with [8, 8], training, each branch kept; 4D L 2, 4C2
            // with [2], the mean before the activation.
            v.push(vec![
                ("V", 64),
                ("TAPS", 3),
                ("HID", 8),
                ("NHID", 2),
                ("HLEN", 1024),
                ("TRAIN", 1),
                ("TPT", 3),
                ("SPT", 2),
                ("WG", 32),
                ("BR", 3),
                ("WS0", 64),
                ("WSM", 256),
                ("WSO", 64),
                ("AFTER", 1),
                ("KEEP", 1),
                ("GB", 512),
                ("WLEN", 285),
                ("W_MID", 192),
                ("W_MID_STRIDE", 0),
                ("W_OUT", 960),
                ("WSPAN", 1138),
            ]);
            v.push(vec![
                ("V", 16),
                ("TAPS", 9),
                ("HID", 2),
                ("NHID", 1),
                ("HLEN", 32),
                ("WG", 16),
                ("TRAIN", 1),
                ("BR", 6),
                ("WS0", 64),
                ("WSO", 64),
                ("AFTER", 0),
                ("GB", 32),
                ("WLEN", 186),
                ("W_MID", 0),
                ("W_MID_STRIDE", 0),
                ("W_OUT", 384),
                ("WSPAN", 742),
            ]);
        }
        Shader::Action => {
            for nd in 1..=4 {
                v.push(vec![("ND", nd), ("WG", if nd == 1 { 32 } else { 256 })]);
            }
        }
        Shader::Prior => v.push(vec![("WG", 32)]),
        Shader::Reduce | Shader::Adam | Shader::Hmc => {}
    }
    v
}

#[test]
fn every_shader_validates_and_emits_for_all_backends() {
    let mut count = 0;
    for &shader in Shader::ALL {
        for consts in variants(shader) {
            let name = format!("{}.wgsl {:?}", shader.name(), consts);
            let source = shader.source(&consts, &[]).unwrap();
            count += emit(&source, &name, false);
        }
    }
    eprintln!(
        "CHECK shaders: {count} entry-point specialisations validated and emitted for SPIR-V, MSL, HLSL, GLSL"
    );
}

/// The f16 storage specialisations (`[device] precision = "f16"`) of every family that stores
/// activations: each storage type alias alone and all together, over the variants above.
#[test]
fn f16_specialisations_validate_and_emit_for_all_backends() {
    let mut count = 0;
    for (shader, aliases) in [
        (Shader::Conv, &["XS", "YS"][..]),
        (Shader::Coupling, &["HS"]),
        (Shader::Z2, &["HS"]),
        (Shader::Combi, &["HS"]),
        (Shader::CouplingLayer, &["HS"]),
    ] {
        let mut sets: Vec<Vec<&str>> = aliases.iter().map(|a| vec![*a]).collect();
        if aliases.len() > 1 {
            sets.push(aliases.to_vec());
        }
        for consts in variants(shader) {
            for halves in &sets {
                let name = format!("{}.wgsl {consts:?} f16 {halves:?}", shader.name());
                let source = shader.source(&consts, halves).unwrap();
                assert!(source.starts_with("enable f16;"), "{name}");
                count += emit(&source, &name, true);
            }
        }
    }
    eprintln!(
        "CHECK shaders f16: {count} entry-point specialisations validated and emitted for SPIR-V, MSL 2.1, HLSL 6.2 (GLSL: none, as wgpu's GL backend)"
    );
    // An alias the file lacks is an error, not a silent f32.
    assert!(Shader::Adam.source(&[], &["XS"]).is_err());
}

/// Validate `source` and emit it for SPIR-V, MSL, HLSL and GLSL (each entry point), checking
/// its workgroup memory; returns the number of entry points. `f16`: the targets that carry
/// half precision (HLSL shader model 6.2, MSL 2.1; GLSL has none, see below).
fn emit(source: &str, name: &str, f16: bool) -> usize {
    let (module, info) = validate(source, name).unwrap_or_else(|e| panic!("{e}"));
    assert!(!module.entry_points.is_empty(), "{name}: no entry points");

    // SPIR-V, all entry points.
    let spv = naga::back::spv::write_vec(&module, &info, &Default::default(), None)
        .unwrap_or_else(|e| panic!("{name}: SPIR-V: {e}"));
    assert!(spv.len() > 5 && spv[0] == 0x0723_0203, "{name}: bad SPIR-V");

    // MSL 2.0 (what Metal on macOS 10.13+ runs), all entry points.
    let msl_opts = naga::back::msl::Options {
        lang_version: if f16 { (2, 1) } else { (2, 0) },
        ..Default::default()
    };
    let (msl, _) = naga::back::msl::write_string(&module, &info, &msl_opts, &Default::default())
        .unwrap_or_else(|e| panic!("{name}: MSL: {e}"));
    assert!(msl.contains("kernel void"), "{name}: MSL has no kernel");

    // HLSL shader model 5.1 (DX12's floor; 6.2 for f16), all entry points.
    let mut hlsl = String::new();
    let hlsl_opts = naga::back::hlsl::Options {
        shader_model: if f16 {
            naga::back::hlsl::ShaderModel::V6_2
        } else {
            naga::back::hlsl::ShaderModel::V5_1
        },
        ..Default::default()
    };
    naga::back::hlsl::Writer::new(&mut hlsl, &hlsl_opts, &Default::default())
        .write(&module, &info, None)
        .unwrap_or_else(|e| panic!("{name}: HLSL: {e}"));
    assert!(
        hlsl.contains("[numthreads("),
        "{name}: HLSL has no compute entry"
    );

    for ep in &module.entry_points {
        // GLSL ES 3.10 (OpenGL ES compute), one entry point per output.
        let mut glsl = String::new();
        let opts = naga::back::glsl::Options::default();
        let pipe = naga::back::glsl::PipelineOptions {
            shader_stage: naga::ShaderStage::Compute,
            entry_point: ep.name.clone(),
            multiview: None,
        };
        let written = naga::back::glsl::Writer::new(
            &mut glsl,
            &module,
            &info,
            &opts,
            &pipe,
            naga::proc::BoundsCheckPolicies::default(),
        )
        .and_then(|mut w| w.write());
        match written {
            Ok(_) => assert!(glsl.contains("local_size_x"), "{name}: GLSL {}", ep.name),
            // naga's GLSL writer has no 16-bit floats, and wgpu's GL backend never reports
            // SHADER_F16, so an OpenGL adapter runs f32 (`Gpu::precision`): the one refusal
            // accepted, and only for f16.
            Err(e) if f16 && e.to_string().contains("unsupported width") => {}
            Err(e) => panic!("{name}: GLSL {}: {e}", ep.name),
        }

        let bytes = workgroup_bytes(&module, &info, &ep.name);
        assert!(
            bytes <= 16384,
            "{name} {}: {bytes} bytes of workgroup memory > 16 KiB",
            ep.name
        );
    }
    module.entry_points.len()
}

/// The shaders must not divide or take remainders of integers inside loops (software drivers
/// scalarise them). Division by compile-time constants outside loops is allowed and marked.
#[test]
fn no_integer_division_in_loops() {
    for &shader in Shader::ALL {
        let mut depth: i32 = 0;
        let mut loop_depths: Vec<i32> = vec![];
        for (n, line) in shader.file().lines().enumerate() {
            let code = line.split("//").next().unwrap();
            if code.trim_start().starts_with("for ") || code.trim_start().starts_with("loop") {
                loop_depths.push(depth);
            }
            depth += code.matches('{').count() as i32 - code.matches('}').count() as i32;
            while loop_depths.last().is_some_and(|&d| depth <= d) {
                loop_depths.pop();
            }
            let in_loop = !loop_depths.is_empty();
            let has_div = code.contains(" / ")
                || code.contains(" % ")
                || code.contains("%=")
                || code.contains("/=");
            // Float division (by a literal with a decimal point, or of f32 values) is fine; we
            // flag any `/` or `%` whose operands are not obviously float.
            let float_div = code.contains(".0") || code.contains("f32(") || code.contains("sqrt(");
            assert!(
                !(in_loop && has_div && !float_div),
                "{}.wgsl:{}: integer division in a loop: {line}",
                shader.name(),
                n + 1
            );
        }
    }
}

#[test]
fn specialising_an_unknown_constant_is_an_error() {
    assert!(Shader::Conv.source(&[("NOPE", 1)], &[]).is_err());
}

/// Launchers bind buffers by the shader's own variable names, read from the compiled module: a
/// name the shader lacks, or a variable the entry point reads and no buffer names, is an error
/// rather than a silent misbinding.
#[test]
fn buffers_bind_by_the_shaders_names() {
    let k = KernelSpec::new(Shader::Reduce, "row_sum").with("WG", 64);
    let (module, info) = validate(&k.source().unwrap(), "reduce").unwrap();
    let (used, all) = bindings(&module, &info, "row_sum").unwrap();
    let b = |name: &str, binding, kind| Binding {
        name: name.into(),
        binding,
        kind,
        half: false,
    };
    assert_eq!(
        used,
        [
            b("p", 0, Bind::Uniform),
            b("a", 1, Bind::Read),
            b("out", 3, Bind::ReadWrite)
        ]
    );
    assert_eq!(all, ["p", "a", "b_in", "out", "grad"]);

    let g = gpu();
    let a = g.storage("a", 64).unwrap();
    let out = g.storage("out", 1).unwrap();
    // rows, n, scale, padding.
    let u: [u32; 4] = [1, 64, 1f32.to_bits(), 0];
    let u = Some(bytemuck::cast_slice::<u32, u8>(&u));
    assert!(
        g.dispatch(&k, u, &[("a", &a), ("out", &out)], [1, 1, 1])
            .is_ok()
    );
    let typo = g
        .dispatch(&k, u, &[("a", &a), ("outt", &out)], [1, 1, 1])
        .err()
        .expect("a name the shader lacks");
    assert!(typo.to_string().contains("outt"), "{typo}");
    let missing = g
        .dispatch(&k, u, &[("a", &a)], [1, 1, 1])
        .err()
        .expect("a variable without a buffer");
    assert!(missing.to_string().contains("uses out"), "{missing}");
}
