//! The GPU runtime: adapter selection, the device, buffers, the shader and pipeline registry,
//! and the `Dispatch` record that every kernel launcher produces.
//!
//! Everything here is built once: pipelines are cached by (shader, entry point, constants),
//! bind groups and their uniform blocks are made when a launcher is planned, and a training step
//! only records already-built dispatches into one command encoder.

pub mod buffers;
pub mod shaders;
pub mod timing;

use anyhow::{Context, Result, anyhow, bail};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

pub use buffers::{GpuBuffer, Precision, Usage};
pub use shaders::{Bind, Binding, KernelSpec, Shader};

/// What the user asked for when choosing an adapter.
#[derive(Clone, Debug, Default)]
pub struct AdapterChoice {
    /// Case-insensitive substring of the adapter name (`--adapter`, or `WGPU_ADAPTER_NAME`).
    pub name: Option<String>,
    /// GomalizingFlow's `device_id`: N >= 0 the N-th adapter in `devices` order, -1 the software one.
    pub device_id: Option<i64>,
}

impl AdapterChoice {
    /// `--adapter` wins over `WGPU_ADAPTER_NAME`, which wins over the config's `device_id`.
    pub fn new(flag: Option<&str>, device_id: Option<i64>) -> Self {
        let env = std::env::var("WGPU_ADAPTER_NAME")
            .ok()
            .filter(|s| !s.is_empty());
        AdapterChoice {
            name: flag.map(str::to_string).or(env),
            device_id,
        }
    }
}

/// One adapter as `gomaflow-wgpu devices` shows it.
#[derive(Clone, Debug)]
pub struct AdapterReport {
    pub index: usize,
    pub info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    pub features: wgpu::Features,
}

impl AdapterReport {
    pub fn is_software(&self) -> bool {
        self.info.device_type == wgpu::DeviceType::Cpu
    }
}

/// How to get an adapter on a machine that has none: the message every "no adapter" error ends with.
pub const NO_ADAPTER_HELP: &str = "wgpu found no usable Vulkan, Metal, DX12 or OpenGL adapter.\n\
     On Linux without a GPU, install Mesa's software Vulkan driver (lavapipe):\n    \
     sudo apt-get install -y mesa-vulkan-drivers libvulkan1\n\
     then check with `gomaflow-wgpu devices`.";

fn instance() -> wgpu::Instance {
    // Backends and flags may be narrowed by WGPU_BACKEND etc.; no window is ever involved.
    wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env())
}

/// Rank adapters so that index 0 is the one a user most likely wants: real GPUs on the native
/// APIs first, software last. `device_id = N` indexes this order, so it is stable across runs.
fn rank(info: &wgpu::AdapterInfo) -> (u8, u8) {
    let ty = match info.device_type {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    };
    let backend = match info.backend {
        wgpu::Backend::Vulkan | wgpu::Backend::Metal | wgpu::Backend::Dx12 => 0,
        _ => 1,
    };
    (backend, ty)
}

/// Every adapter wgpu can see that can run compute shaders, in `device_id` order.
fn sorted_adapters(instance: &wgpu::Instance) -> Vec<wgpu::Adapter> {
    let mut adapters: Vec<wgpu::Adapter> =
        pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()))
            .into_iter()
            .filter(|a| {
                a.get_downlevel_capabilities()
                    .flags
                    .contains(wgpu::DownlevelFlags::COMPUTE_SHADERS)
            })
            .collect();
    adapters.sort_by_key(|a| rank(&a.get_info()));
    adapters
}

/// The adapters `gomaflow-wgpu devices` lists.
pub fn list_adapters() -> Vec<AdapterReport> {
    let instance = instance();
    sorted_adapters(&instance)
        .iter()
        .enumerate()
        .map(|(index, a)| AdapterReport {
            index,
            info: a.get_info(),
            limits: a.limits(),
            features: a.features(),
        })
        .collect()
}

fn pick_adapter(instance: &wgpu::Instance, choice: &AdapterChoice) -> Result<wgpu::Adapter> {
    let adapters = sorted_adapters(instance);
    if adapters.is_empty() {
        bail!("{NO_ADAPTER_HELP}");
    }
    let names = || {
        adapters
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let info = a.get_info();
                format!(
                    "  [{i}] {} ({:?}, {:?})",
                    info.name, info.backend, info.device_type
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    if let Some(name) = &choice.name {
        let needle = name.to_lowercase();
        return adapters
            .iter()
            .find(|a| a.get_info().name.to_lowercase().contains(&needle))
            .cloned()
            .ok_or_else(|| {
                anyhow!(
                    "no adapter's name contains {name:?} (from --adapter or WGPU_ADAPTER_NAME); \
                     the adapters are:\n{}",
                    names()
                )
            });
    }
    match choice.device_id {
        None => Ok(adapters[0].clone()),
        Some(-1) => adapters
            .iter()
            .find(|a| a.get_info().device_type == wgpu::DeviceType::Cpu)
            .cloned()
            .ok_or_else(|| {
                anyhow!(
                    "device_id = -1 asks for the software adapter, but none was found; the \
                     adapters are:\n{}\nInstall one with: sudo apt-get install -y \
                     mesa-vulkan-drivers libvulkan1",
                    names()
                )
            }),
        Some(n) if n >= 0 && (n as usize) < adapters.len() => Ok(adapters[n as usize].clone()),
        Some(n) => bail!(
            "device_id = {n} names no adapter: accepted are -1 (the software adapter) or 0..{} \
             (the order of `gomaflow-wgpu devices`):\n{}",
            adapters.len() - 1,
            names()
        ),
    }
}

/// The name of every kernel's parameter block in the shaders (`var<uniform> p: Params`).
pub const UNIFORM_BLOCK: &str = "p";

/// A compiled pipeline, the explicit bind-group layout it was built with, and the bindings it
/// was built from (read from the shader: `shaders::bindings`).
#[derive(Clone)]
pub struct Pipeline {
    pub pipeline: wgpu::ComputePipeline,
    pub layout: wgpu::BindGroupLayout,
    pub label: String,
    /// The bindings the entry point uses, in `@binding` order.
    pub bindings: Vec<Binding>,
    /// Every bound variable of the module, so that a launcher naming one that does not exist
    /// is an error rather than silently ignored.
    pub globals: Vec<String>,
}

/// The device and everything built on it once.
pub struct Gpu {
    pub adapter: wgpu::Adapter,
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    pipelines: Mutex<HashMap<String, Pipeline>>,
    /// Convolution tilings chosen for this adapter by `crate::tune` (or read back from a run
    /// directory), by `ConvSpec::tune_key`; a convolution not listed takes its rule's.
    conv_tilings: Mutex<HashMap<String, crate::kernels::tiling::ConvTiling>>,
    /// Whole layers (true) or one launch per kernel, chosen for this adapter by `crate::tune`
    /// for `Fusion::Auto` tapes, by `TapeSpec::fusion_key`.
    fusion_choices: Mutex<HashMap<String, bool>>,
    /// A 16-byte uniform buffer for optional uniform bindings a kernel does not read.
    pub dummy_uniform: GpuBuffer,
    /// A 16-byte storage buffer for storage bindings a specialisation does not touch (WGSL
    /// keeps a binding that only a constant-false branch uses).
    pub dummy_storage: GpuBuffer,
    /// A second one, for a read-write binding in a dispatch that also binds `dummy_storage`
    /// read-only (one buffer cannot be both in one dispatch).
    pub dummy_storage_rw: GpuBuffer,
    /// The first uncaptured wgpu error (validation, out of memory, device lost), reported by
    /// `check` as an error instead of wgpu's default panic.
    error: Arc<Mutex<Option<String>>>,
    /// `precision` warned that f16 is missing (once per device).
    warned_f16: std::sync::atomic::AtomicBool,
}

impl Gpu {
    /// Open the chosen adapter with WebGPU's default limits, raised only where the adapter allows
    /// more and this tool needs it (large buffers for large lattices and batches).
    pub fn new(choice: &AdapterChoice) -> Result<Gpu> {
        let instance = instance();
        let adapter = pick_adapter(&instance, choice)?;
        let info = adapter.get_info();
        let alimits = adapter.limits();
        let base = wgpu::Limits::default();
        let limits = wgpu::Limits {
            max_storage_buffer_binding_size: alimits.max_storage_buffer_binding_size,
            max_buffer_size: alimits.max_buffer_size,
            ..base
        };
        // Timestamps only serve `bench`, f16 only `[device] precision = "f16"`; request them
        // where the adapter has them.
        let features = adapter.features()
            & (wgpu::Features::TIMESTAMP_QUERY
                | wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS
                | wgpu::Features::SHADER_F16);
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("gomaflow"),
            required_features: features,
            required_limits: limits.clone(),
            ..Default::default()
        }))
        .with_context(|| {
            format!(
                "could not open adapter {:?} ({:?}) with WebGPU's default limits",
                info.name, info.backend
            )
        })?;
        let error = Arc::new(Mutex::new(None::<String>));
        let sink = error.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            let mut slot = sink.lock().unwrap();
            if slot.is_none() {
                *slot = Some(Gpu::error_chain(&e));
            }
        }));
        let sink = error.clone();
        device.set_device_lost_callback(move |reason, msg| {
            if reason != wgpu::DeviceLostReason::Destroyed {
                let mut slot = sink.lock().unwrap();
                if slot.is_none() {
                    *slot = Some(format!("the GPU device was lost ({reason:?}): {msg}"));
                }
            }
        });
        // 16-byte placeholders for bindings a kernel does not use.
        let placeholder = |label: &str, usage: Usage| GpuBuffer {
            buffer: device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: 16,
                usage,
                mapped_at_creation: false,
            }),
            label: label.into(),
            size: 16,
            usage,
            range: None,
            precision: Precision::F32,
        };
        let dummy_uniform = placeholder("unused uniform", Usage::UNIFORM | Usage::COPY_DST);
        let dummy_storage = placeholder("unused storage", Usage::STORAGE);
        let dummy_storage_rw = placeholder("unused read-write storage", Usage::STORAGE);
        Ok(Gpu {
            adapter,
            device,
            queue,
            info,
            limits,
            pipelines: Mutex::new(HashMap::new()),
            conv_tilings: Mutex::new(HashMap::new()),
            fusion_choices: Mutex::new(HashMap::new()),
            dummy_uniform,
            dummy_storage,
            dummy_storage_rw,
            error,
            warned_f16: Default::default(),
        })
    }

    /// A one-line description for logs: name, backend, type, driver.
    pub fn describe(&self) -> String {
        let i = &self.info;
        format!(
            "{} ({:?}, {:?}, driver {} {})",
            i.name, i.backend, i.device_type, i.driver, i.driver_info
        )
    }

    pub fn is_software(&self) -> bool {
        self.info.device_type == wgpu::DeviceType::Cpu
    }

    /// Whether `b` is one of the placeholders bound where a specialisation reads nothing.
    fn is_placeholder(&self, b: &GpuBuffer) -> bool {
        [
            &self.dummy_uniform,
            &self.dummy_storage,
            &self.dummy_storage_rw,
        ]
        .iter()
        .any(|d| d.buffer == b.buffer)
    }

    /// Whether the device was opened with SHADER_F16 (f16 in shaders and storage buffers).
    pub fn has_f16(&self) -> bool {
        self.device.features().contains(wgpu::Features::SHADER_F16)
    }

    /// The precision activations get when `wanted` is asked for: f16 only where the device has
    /// SHADER_F16 (f16 arithmetic and 16-bit storage), otherwise f32 with a one-line warning.
    pub fn precision(&self, wanted: Precision) -> Precision {
        if wanted == Precision::F16 && !self.has_f16() {
            if !self
                .warned_f16
                .swap(true, std::sync::atomic::Ordering::Relaxed)
            {
                eprintln!(
                    "warning: adapter {:?} has no SHADER_F16; activations stay f32",
                    self.info.name
                );
            }
            return Precision::F32;
        }
        wanted
    }

    /// The tiling chosen for the convolution `key` (`ConvSpec::tune_key`), if one was.
    pub fn conv_tiling(&self, key: &str) -> Option<crate::kernels::tiling::ConvTiling> {
        self.conv_tilings.lock().unwrap().get(key).copied()
    }

    /// Whether `Fusion::Auto` tapes `key` (`TapeSpec::fusion_key`) run whole layers, where
    /// that was chosen.
    pub fn fusion_choice(&self, key: &str) -> Option<bool> {
        self.fusion_choices.lock().unwrap().get(key).copied()
    }

    /// Run `Fusion::Auto` tapes `key` with whole layers (`true`) or per kernel from now on.
    pub fn set_fusion_choice(&self, key: &str, whole: bool) {
        self.fusion_choices
            .lock()
            .unwrap()
            .insert(key.to_string(), whole);
    }

    /// Use `tiling` for every convolution `key` built from now on.
    pub fn set_conv_tiling(&self, key: &str, tiling: crate::kernels::tiling::ConvTiling) {
        self.conv_tilings
            .lock()
            .unwrap()
            .insert(key.to_string(), tiling);
    }

    pub fn has_timestamps(&self) -> bool {
        self.device
            .features()
            .contains(wgpu::Features::TIMESTAMP_QUERY)
    }

    /// Turn any uncaptured wgpu error into an `Err` (call after submits and at plan time).
    pub fn check(&self) -> Result<()> {
        if let Some(e) = self.error.lock().unwrap().take() {
            bail!("GPU error on {}: {e}", self.info.name);
        }
        Ok(())
    }

    /// A wgpu error with its cause chain (wgpu's Display shows only the outermost line).
    pub fn error_chain(e: &dyn std::error::Error) -> String {
        let mut s = e.to_string();
        let mut cur = e.source();
        while let Some(c) = cur {
            s.push_str(": ");
            s.push_str(&c.to_string());
            cur = c.source();
        }
        s
    }

    /// Block until the queue is idle.
    pub fn wait(&self) -> Result<()> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| anyhow!("waiting for the GPU failed: {e}"))?;
        self.check()
    }

    /// The pipeline for `spec`, compiled on first use and cached for the life of the device.
    pub fn pipeline(&self, spec: &KernelSpec) -> Result<Pipeline> {
        let key = spec.key();
        if let Some(p) = self.pipelines.lock().unwrap().get(&key) {
            return Ok(p.clone());
        }
        let source = spec.source()?;
        // wgpu leaves the workgroup-memory limit to us: check it before the driver sees it.
        let (module, info) = shaders::validate(&source, &key)?;
        let wg_bytes = shaders::workgroup_bytes(&module, &info, spec.entry);
        if wg_bytes > self.limits.max_compute_workgroup_storage_size {
            bail!(
                "kernel {key} needs {wg_bytes} bytes of workgroup memory, over the limit of {}",
                self.limits.max_compute_workgroup_storage_size
            );
        }
        let (bindings, globals) =
            shaders::bindings(&module, &info, spec.entry).with_context(|| key.clone())?;
        let entries: Vec<wgpu::BindGroupLayoutEntry> = bindings
            .iter()
            .map(|b| wgpu::BindGroupLayoutEntry {
                binding: b.binding,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: match b.kind {
                    Bind::Uniform => wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Uniform,
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                    Bind::Read | Bind::ReadWrite => wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Storage {
                            read_only: b.kind == Bind::Read,
                        },
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                },
                count: None,
            })
            .collect();
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let layout = self
            .device
            .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some(&key),
                entries: &entries,
            });
        let pipeline_layout = self
            .device
            .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(&key),
                bind_group_layouts: &[Some(&layout)],
                immediate_size: 0,
            });
        // Every index in our shaders is bounded by construction (tables built on the CPU, sizes
        // checked at plan time), and bounds checks cost software drivers a branch per access.
        let module = unsafe {
            self.device.create_shader_module_trusted(
                wgpu::ShaderModuleDescriptor {
                    label: Some(&key),
                    source: wgpu::ShaderSource::Wgsl(source.into()),
                },
                wgpu::ShaderRuntimeChecks::unchecked(),
            )
        };
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(&key),
                layout: Some(&pipeline_layout),
                module: &module,
                entry_point: Some(spec.entry),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants: &[],
                    // Every kernel writes its workgroup memory before reading it.
                    zero_initialize_workgroup_memory: false,
                },
                cache: None,
            });
        if let Some(e) = pollster::block_on(scope.pop()) {
            bail!("building pipeline {key} failed: {}", Gpu::error_chain(&e));
        }
        let p = Pipeline {
            pipeline,
            layout,
            label: key.clone(),
            bindings,
            globals,
        };
        self.pipelines.lock().unwrap().insert(key, p.clone());
        Ok(p)
    }

    /// Build a dispatch once: pipeline, uniform block and bind group. `uniform` is the kernel's
    /// parameter block, bound to the shader's `var<uniform> p`; `buffers` are bound by the
    /// names of the shader's variables. A family's launcher may pass one list to all its entry
    /// points: each binds the variables it uses. A name the shader lacks, or a variable the
    /// entry point uses and no buffer names, is an error.
    pub fn dispatch(
        &self,
        spec: &KernelSpec,
        uniform: Option<&[u8]>,
        buffers: &[(&str, &GpuBuffer)],
        groups: [u32; 3],
    ) -> Result<Dispatch> {
        let pipeline = self.pipeline(spec)?;
        let key = &pipeline.label;
        if let Some((name, _)) = buffers
            .iter()
            .find(|(n, _)| *n == UNIFORM_BLOCK || !pipeline.globals.iter().any(|g| g == n))
        {
            bail!("kernel {key}: the shader has no buffer variable {name} to bind");
        }
        let reads_block = pipeline
            .bindings
            .iter()
            .any(|b| b.name == UNIFORM_BLOCK && b.kind == Bind::Uniform);
        if reads_block != uniform.is_some() {
            bail!(
                "kernel {key}: uniform block and the shader's `var<uniform> {UNIFORM_BLOCK}` disagree"
            );
        }
        let max_groups = self.limits.max_compute_workgroups_per_dimension;
        if groups.iter().any(|&g| g > max_groups) {
            bail!(
                "kernel {key} needs {groups:?} workgroups, over the adapter's \
                 max_compute_workgroups_per_dimension = {max_groups}"
            );
        }
        let uniform_buf = uniform.map(|bytes| {
            // Uniform blocks are padded to 16 bytes as WGSL's uniform layout expects.
            let mut padded = bytes.to_vec();
            padded.resize(bytes.len().div_ceil(16) * 16, 0);
            use wgpu::util::DeviceExt;
            self.device
                .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some(key),
                    contents: &padded,
                    usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                })
        });
        let mut entries = Vec::with_capacity(pipeline.bindings.len());
        for b in &pipeline.bindings {
            let resource = match (&uniform_buf, b.name.as_str()) {
                (Some(u), UNIFORM_BLOCK) => u.as_entire_binding(),
                _ => {
                    let Some((_, buf)) = buffers.iter().find(|(n, _)| *n == b.name) else {
                        bail!(
                            "kernel {key} uses {} (binding {}) and no buffer was given for it",
                            b.name,
                            b.binding
                        );
                    };
                    let need = if b.kind == Bind::Uniform {
                        Usage::UNIFORM
                    } else {
                        Usage::STORAGE
                    };
                    if !buf.usage.contains(need) {
                        bail!(
                            "buffer {} cannot be bound as {need:?} ({})",
                            buf.label,
                            b.name
                        );
                    }
                    // An activation buffer's type is the shader's (placeholders are never read).
                    let half = buf.precision == Precision::F16;
                    if half != b.half && !self.is_placeholder(buf) {
                        bail!(
                            "kernel {key}: buffer {} holds {} values but {} is declared {}",
                            buf.label,
                            buf.precision.name(),
                            b.name,
                            if b.half {
                                "array<f16>"
                            } else {
                                "an array of 4-byte words"
                            }
                        );
                    }
                    buf.binding()
                }
            };
            entries.push(wgpu::BindGroupEntry {
                binding: b.binding,
                resource,
            });
        }
        let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(key),
            layout: &pipeline.layout,
            entries: &entries,
        });
        Ok(Dispatch {
            pipeline: pipeline.pipeline,
            bind_group,
            uniform: uniform_buf,
            groups,
            label: pipeline.label,
            work: Work::default(),
        })
    }

    /// Record `dispatches` into one compute pass of a fresh encoder, submit, and wait.
    /// For tests and one-off work; the training loop records its own encoder.
    pub fn run(&self, dispatches: &[&Dispatch]) -> Result<()> {
        self.submit("run", dispatches);
        self.wait()
    }

    /// Record `dispatches` into one compute pass of a fresh encoder and submit, without waiting.
    pub fn submit(&self, label: &str, dispatches: &[&Dispatch]) {
        let mut enc = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(label) });
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(label),
                timestamp_writes: None,
            });
            for d in dispatches {
                d.record(&mut pass);
            }
        }
        self.queue.submit([enc.finish()]);
    }
}

/// One kernel launch, fully prepared: recording it costs two bind calls and a dispatch.
#[derive(Clone)]
pub struct Dispatch {
    pub pipeline: wgpu::ComputePipeline,
    pub bind_group: wgpu::BindGroup,
    /// The uniform block, kept so that launchers can rewrite it (e.g. a learning rate per epoch).
    pub uniform: Option<wgpu::Buffer>,
    pub groups: [u32; 3],
    pub label: String,
    /// What the kernel must do at least, for `bench`'s GFLOP/s and GB/s.
    pub work: Work,
}

/// A dispatch's useful floating-point operations and its compulsory memory traffic (each
/// input read and each output written once).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Work {
    pub flops: f64,
    pub bytes: f64,
}

impl Dispatch {
    /// Attach the work model (builder style).
    pub fn with_work(mut self, flops: f64, bytes: f64) -> Self {
        self.work = Work { flops, bytes };
        self
    }

    pub fn record(&self, pass: &mut wgpu::ComputePass<'_>) {
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, &self.bind_group, &[]);
        pass.dispatch_workgroups(self.groups[0], self.groups[1], self.groups[2]);
    }

    /// Overwrite the uniform block (staged into the next submit by wgpu).
    pub fn write_uniform(&self, queue: &wgpu::Queue, bytes: &[u8]) {
        if let Some(u) = &self.uniform {
            queue.write_buffer(u, 0, bytes);
        }
    }
}

/// Workgroups needed to cover `n` items with `per_group` items each.
pub fn groups_for(n: usize, per_group: usize) -> u32 {
    n.div_ceil(per_group).max(1) as u32
}
