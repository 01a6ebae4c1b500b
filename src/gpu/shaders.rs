//! The shader registry: every WGSL family of `shaders/`, compiled into the binary, and their
//! specialisation. A family is `common.wgsl` followed by the family's file; a kernel is an entry
//! point of it with some `const` lines rewritten (channel counts, taps, activation, workgroup
//! size), so loops have compile-time bounds and accumulators live in registers.

use anyhow::{Result, bail};

/// The shared prelude: activations and the Philox generator.
pub const COMMON: &str = include_str!("../../shaders/common.wgsl");

/// The registry: each family's variant, its name (the file `shaders/<name>.wgsl`, named as
/// its launcher `src/kernels/<name>.rs`) and its text, compiled into the binary. A new family
/// is one line here.
macro_rules! shaders {
    ($($variant:ident => $name:literal,)*) => {
        /// One WGSL file of `shaders/`.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Shader {
            $($variant,)*
        }

        impl Shader {
            pub const ALL: &[Shader] = &[$(Shader::$variant,)*];

            pub fn name(self) -> &'static str {
                match self {
                    $(Shader::$variant => $name,)*
                }
            }

            /// The file's own text (without the prelude).
            pub fn file(self) -> &'static str {
                match self {
                    $(Shader::$variant => include_str!(concat!("../../shaders/", $name, ".wgsl")),)*
                }
            }
        }
    };
}

shaders! {
    Conv => "conv",
    Coupling => "coupling",
    CouplingLayer => "coupling_layer",
    Action => "action",
    Prior => "prior",
    Reduce => "reduce",
    Adam => "adam",
    Hmc => "hmc",
    Z2 => "z2",
    Combi => "combi",
    Spline => "spline",
}

impl Shader {
    /// The compilable source with `consts` substituted: each `(NAME, value)` replaces the line
    /// `const NAME: u32 = ...;` of the file. Naming a constant the file lacks is an error.
    ///
    /// Likewise each name of `halves` turns the file's line `alias NAME = f32;` (a storage
    /// type of activations) into `alias NAME = f16;`, and the source then starts with
    /// `enable f16;`.
    pub fn source(self, consts: &[(&str, u32)], halves: &[&str]) -> Result<String> {
        let mut out = String::with_capacity(COMMON.len() + self.file().len() + 64);
        if !halves.is_empty() {
            out.push_str("enable f16;\n");
        }
        out.push_str(COMMON);
        out.push('\n');
        let mut found = vec![false; consts.len()];
        let mut found_alias = vec![false; halves.len()];
        for line in self.file().lines() {
            let mut replaced = false;
            if let Some(rest) = line.strip_prefix("alias ") {
                if let Some(i) = (halves.iter()).position(|h| rest == format!("{h} = f32;")) {
                    out.push_str(&format!("alias {} = f16;", halves[i]));
                    found_alias[i] = true;
                    replaced = true;
                }
            }
            if let Some(rest) = line.strip_prefix("const ") {
                for (i, (name, value)) in consts.iter().enumerate() {
                    if rest
                        .strip_prefix(name)
                        .is_some_and(|r| r.starts_with(": u32 ="))
                    {
                        out.push_str(&format!("const {name}: u32 = {value}u;"));
                        found[i] = true;
                        replaced = true;
                        break;
                    }
                }
            }
            if !replaced {
                out.push_str(line);
            }
            out.push('\n');
        }
        if let Some(i) = found.iter().position(|f| !f) {
            bail!(
                "shader {}.wgsl has no constant {} to specialise",
                self.name(),
                consts[i].0
            );
        }
        if let Some(i) = found_alias.iter().position(|f| !f) {
            bail!(
                "shader {}.wgsl has no storage type `alias {} = f32;` to make f16",
                self.name(),
                halves[i]
            );
        }
        Ok(out)
    }
}

/// How a kernel uses one binding, as the shader declares it (`var<uniform>`,
/// `var<storage, read>`, `var<storage, read_write>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bind {
    Uniform,
    Read,
    ReadWrite,
}

/// One binding an entry point uses, read from the shader itself: its variable's name, its
/// `@binding` number and how it is declared. Launchers bind buffers by these names, so the
/// shader is the one source of the contract.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    pub name: String,
    pub binding: u32,
    pub kind: Bind,
    /// An array of f16 or of f16 vectors (the buffer bound to it must hold f16 values).
    pub half: bool,
}

/// One kernel: a family, an entry point and its constants. Its bindings are not declared here:
/// `bindings` reads them from the compiled module.
#[derive(Clone, Debug)]
pub struct KernelSpec {
    pub shader: Shader,
    pub entry: &'static str,
    pub consts: Vec<(&'static str, u32)>,
    /// Storage-type aliases made f16 (see `Shader::source`).
    pub halves: Vec<&'static str>,
}

impl KernelSpec {
    pub fn new(shader: Shader, entry: &'static str) -> Self {
        KernelSpec {
            shader,
            entry,
            consts: Vec::new(),
            halves: Vec::new(),
        }
    }

    /// The same kernel's family and constants at another entry point (builder style).
    pub fn with_entry(mut self, entry: &'static str) -> Self {
        self.entry = entry;
        self
    }

    /// Set a specialisation constant (builder style).
    pub fn with(mut self, name: &'static str, value: u32) -> Self {
        self.consts.push((name, value));
        self
    }

    /// Store the activations of storage type `alias` as `precision` (builder style).
    pub fn with_type(mut self, alias: &'static str, precision: super::Precision) -> Self {
        if precision == super::Precision::F16 {
            self.halves.push(alias);
        }
        self
    }

    /// The cache key and label, e.g. `conv.forward[CIN=1,COUT=8,TAPS=9]` (and `XS=f16` for
    /// each f16 storage type).
    pub fn key(&self) -> String {
        let consts: Vec<String> = (self.consts.iter())
            .map(|(n, v)| format!("{n}={v}"))
            .chain(self.halves.iter().map(|h| format!("{h}=f16")))
            .collect();
        format!(
            "{}.{}[{}]",
            self.shader.name(),
            self.entry,
            consts.join(",")
        )
    }

    pub fn source(&self) -> Result<String> {
        self.shader.source(&self.consts, &self.halves)
    }
}

/// Parse and validate WGSL with naga (the compiler wgpu itself uses), returning the module and
/// its analysis. Errors carry naga's annotated message. f16 is allowed (only specialisations
/// with f16 storage, built where the adapter has SHADER_F16, declare it).
pub fn validate(source: &str, name: &str) -> Result<(naga::Module, naga::valid::ModuleInfo)> {
    let module = naga::front::wgsl::parse_str(source)
        .map_err(|e| anyhow::anyhow!("{name}: {}", e.emit_to_string(source)))?;
    let info = naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::SHADER_FLOAT16,
    )
    .validate(&module)
    .map_err(|e| anyhow::anyhow!("{name}: {}", e.emit_to_string(source)))?;
    Ok((module, info))
}

/// Bytes of workgroup memory that entry point `entry` uses. wgpu does not check this against the
/// adapter's limit (16 KiB by default), so the registry does.
pub fn workgroup_bytes(module: &naga::Module, info: &naga::valid::ModuleInfo, entry: &str) -> u32 {
    let Some(index) = module.entry_points.iter().position(|e| e.name == entry) else {
        return 0;
    };
    let uses = info.get_entry_point(index);
    module
        .global_variables
        .iter()
        .filter(|(h, g)| g.space == naga::AddressSpace::WorkGroup && !uses[*h].is_empty())
        .map(|(_, g)| module.types[g.ty].inner.size(module.to_ctx()))
        .sum()
}

/// The bindings entry point `entry` uses (in `@binding` order) and the names of every bound
/// variable of the module (any entry point's). Only group 0 exists in this project's shaders.
pub fn bindings(
    module: &naga::Module,
    info: &naga::valid::ModuleInfo,
    entry: &str,
) -> Result<(Vec<Binding>, Vec<String>)> {
    let Some(index) = module.entry_points.iter().position(|e| e.name == entry) else {
        bail!("the shader has no entry point {entry}");
    };
    let uses = info.get_entry_point(index);
    let mut used = Vec::new();
    let mut all = Vec::new();
    for (h, g) in module.global_variables.iter() {
        let (Some(rb), Some(name)) = (&g.binding, &g.name) else {
            continue;
        };
        if rb.group != 0 {
            bail!("variable {name}: only @group(0) is supported");
        }
        let kind = match g.space {
            naga::AddressSpace::Uniform => Bind::Uniform,
            naga::AddressSpace::Storage { access } => {
                if access.contains(naga::StorageAccess::STORE) {
                    Bind::ReadWrite
                } else {
                    Bind::Read
                }
            }
            _ => bail!("variable {name}: only uniform and storage buffers are supported"),
        };
        all.push(name.clone());
        // An array of f16 or of vectors of f16.
        let f16 = naga::Scalar {
            kind: naga::ScalarKind::Float,
            width: 2,
        };
        let half = match module.types[g.ty].inner {
            naga::TypeInner::Array { base, .. } => match module.types[base].inner {
                naga::TypeInner::Scalar(s) | naga::TypeInner::Vector { scalar: s, .. } => s == f16,
                _ => false,
            },
            _ => false,
        };
        if !uses[h].is_empty() {
            used.push(Binding {
                name: name.clone(),
                binding: rb.binding,
                kind,
                half,
            });
        }
    }
    used.sort_by_key(|b| b.binding);
    Ok((used, all))
}
