//! `gomaflow-wgpu devices`: every adapter wgpu sees, in the order `device_id` indexes.

use crate::gpu::{NO_ADAPTER_HELP, list_adapters};
use anyhow::{Result, bail};

pub fn run() -> Result<()> {
    let adapters = list_adapters();
    if adapters.is_empty() {
        bail!("{NO_ADAPTER_HELP}");
    }
    for a in &adapters {
        let i = &a.info;
        let l = &a.limits;
        let yes = |f: wgpu::Features| if a.features.contains(f) { "yes" } else { "no" };
        println!(
            "[{}] {}{}",
            a.index,
            i.name,
            if a.is_software() {
                "  (software: device_id = -1)"
            } else {
                ""
            }
        );
        println!(
            "    backend {:?}, type {:?}, driver {} {}",
            i.backend, i.device_type, i.driver, i.driver_info
        );
        println!(
            "    max storage binding {} MiB, max buffer {} MiB, storage buffers per stage {}",
            l.max_storage_buffer_binding_size >> 20,
            l.max_buffer_size >> 20,
            l.max_storage_buffers_per_shader_stage
        );
        println!(
            "    workgroup: size {}x{}x{}, {} invocations, {} KiB memory, {} groups per dimension",
            l.max_compute_workgroup_size_x,
            l.max_compute_workgroup_size_y,
            l.max_compute_workgroup_size_z,
            l.max_compute_invocations_per_workgroup,
            l.max_compute_workgroup_storage_size / 1024,
            l.max_compute_workgroups_per_dimension
        );
        println!(
            "    f16 {}, subgroups {}, timestamps {}",
            yes(wgpu::Features::SHADER_F16),
            yes(wgpu::Features::SUBGROUP),
            yes(wgpu::Features::TIMESTAMP_QUERY)
        );
    }
    Ok(())
}
