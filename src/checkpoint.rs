//! Checkpoints in safetensors: the weights under PyTorch's names for the reference model
//! (`layers.{l}.net.{2j}.weight` [cout, cin, k, ..., k] and `.bias`, so `load_state_dict`
//! takes them), Adam's moments, the step counter, and the training state in the metadata.
//! Written atomically; loading checks every name, shape and type and says what is wrong.

use crate::files::write_atomic;
use crate::flow::FlowSpec;
use anyhow::{Context, Result, anyhow, bail};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::collections::HashMap;
use std::path::Path;

const FORMAT: &str = "gomaflow-wgpu checkpoint 1";

#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    /// The flat parameters (the layout of `FlowSpec::nets`).
    pub params: Vec<f32>,
    /// Adam's first and second moments, flat like the parameters.
    pub adam: Option<(Vec<f32>, Vec<f32>)>,
    /// Training steps done (the prior's draw counter and Adam's t).
    pub step: u64,
    /// Epochs whose evaluation is done.
    pub evaluated_epochs: u64,
    /// Best MH acceptance seen at an evaluation (for best.safetensors).
    pub best_acceptance: f64,
    /// Training wall time so far, across resumes.
    pub elapsed_s: f64,
}

/// A one-line description of the architecture, stored to catch mismatched resumes.
pub fn describe(flow: &FlowSpec) -> String {
    let mut d = format!(
        "Nd={} L={} n_layers={} hidden_sizes={:?} kernel_size={} use_final_tanh={}",
        flow.lattice.nd,
        flow.lattice.l,
        flow.n_layers,
        flow.hidden,
        flow.kernel_size,
        flow.final_tanh
    );
    // Written only when set, so that other checkpoints keep their description.
    if flow.z2() {
        d.push_str(" z2_equivariant=true");
    }
    if let crate::flow::CouplingKind::Spline { bins, bound } = flow.coupling() {
        d.push_str(&format!(" spline_bins={bins} spline_bound={bound:?}"));
    }
    if let Some(c) = flow.combi {
        let act = c.act.key();
        d.push_str(&format!(" combi_r={} combi_activation={act}", c.r));
    }
    d
}

fn bytes(x: &[f32]) -> &[u8] {
    bytemuck::cast_slice(x)
}

pub fn save(path: &Path, flow: &FlowSpec, ck: &Checkpoint) -> Result<()> {
    let mut tensors: Vec<(String, TensorView)> = Vec::new();
    for t in flow.tensors() {
        let view = TensorView::new(Dtype::F32, t.shape, bytes(&ck.params[t.range]))?;
        tensors.push((t.name, view));
    }
    if let Some((m, v)) = &ck.adam {
        tensors.push((
            "adam.m".into(),
            TensorView::new(Dtype::F32, vec![m.len()], bytes(m))?,
        ));
        tensors.push((
            "adam.v".into(),
            TensorView::new(Dtype::F32, vec![v.len()], bytes(v))?,
        ));
    }
    let meta: HashMap<String, String> = [
        ("format", FORMAT.to_string()),
        ("flow", describe(flow)),
        ("step", ck.step.to_string()),
        ("evaluated_epochs", ck.evaluated_epochs.to_string()),
        ("best_acceptance", format!("{:e}", ck.best_acceptance)),
        ("elapsed_s", format!("{:e}", ck.elapsed_s)),
    ]
    .into_iter()
    .map(|(a, b)| (a.to_string(), b))
    .collect();
    let data = safetensors::serialize(tensors, Some(meta))
        .map_err(|e| anyhow!("serialising checkpoint {}: {e}", path.display()))?;
    write_atomic(path, &data)
}

fn f32s(view: &TensorView, name: &str, file: &str) -> Result<Vec<f32>> {
    if view.dtype() != Dtype::F32 {
        bail!(
            "{file}: tensor {name} has dtype {:?}, expected F32",
            view.dtype()
        );
    }
    Ok(view
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

/// Moves a flat vector of the packed layout (each conv's weights and bias end to end) into the
/// aligned layout of `FlowSpec::param_len`, leaving the padding zero.
fn spread_packed(flow: &FlowSpec, packed: &[f32]) -> Vec<f32> {
    let mut out = vec![0f32; flow.param_len];
    let mut src = 0;
    for t in flow.tensors() {
        let n = t.range.len();
        out[t.range].copy_from_slice(&packed[src..src + n]);
        src += n;
    }
    out
}

/// Load a checkpoint for `flow`. With `strict_lattice = false` a checkpoint of the same network
/// on another lattice size is accepted (the convolutions do not depend on L).
pub fn load(path: &Path, flow: &FlowSpec, strict_lattice: bool) -> Result<Checkpoint> {
    let file = path.display().to_string();
    let data = std::fs::read(path).with_context(|| format!("cannot read checkpoint {file}"))?;
    let st = SafeTensors::deserialize(&data).map_err(|e| {
        anyhow!("{file} is not a valid safetensors checkpoint (corrupt or truncated?): {e}")
    })?;
    let (_, meta) = SafeTensors::read_metadata(&data)
        .map_err(|e| anyhow!("{file}: unreadable safetensors header: {e}"))?;
    let meta = meta.metadata().clone().unwrap_or_default();
    let format = meta.get("format").map(String::as_str).unwrap_or("");
    if format != FORMAT {
        bail!("{file} is not a gomaflow-wgpu checkpoint (format {format:?}, expected {FORMAT:?})");
    }
    let stored = meta.get("flow").cloned().unwrap_or_default();
    if strict_lattice && stored != describe(flow) {
        bail!(
            "{file} was written for a different model:\n  checkpoint: {stored}\n  config:     {}",
            describe(flow)
        );
    }
    let num = |key: &str| -> Result<f64> {
        meta.get(key)
            .ok_or_else(|| anyhow!("{file}: metadata lacks {key}"))?
            .parse::<f64>()
            .map_err(|_| anyhow!("{file}: metadata {key} is not a number"))
    };
    let mut params = vec![0f32; flow.param_len];
    for want in flow.tensors() {
        let name = &want.name;
        let t = st.tensor(name).map_err(|_| {
            anyhow!(
                "{file} has no tensor {name}: it was written for another model \
                 (checkpoint: {stored}; config: {})",
                describe(flow)
            )
        })?;
        if t.shape() != want.shape.as_slice() {
            bail!(
                "{file}: tensor {name} has shape {:?}, the config needs {:?} \
                 (checkpoint: {stored}; config: {})",
                t.shape(),
                want.shape,
                describe(flow)
            );
        }
        params[want.range].copy_from_slice(&f32s(&t, name, &file)?);
    }
    if let Some(bad) = params.iter().position(|v| !v.is_finite()) {
        bail!("{file}: parameter {bad} is not finite; the checkpoint is corrupt");
    }
    let adam = match (st.tensor("adam.m"), st.tensor("adam.v")) {
        (Ok(m), Ok(v)) => {
            let (m, v) = (f32s(&m, "adam.m", &file)?, f32s(&v, "adam.v", &file)?);
            if m.len() != v.len() {
                bail!("{file}: Adam moments adam.m and adam.v differ in length");
            }
            if m.len() == params.len() {
                Some((m, v))
            } else if m.len() == flow.n_params() {
                // Written before the parameters were aligned for uniform binding: the same
                // tensors packed end to end. Spread them into the aligned layout.
                Some((spread_packed(flow, &m), spread_packed(flow, &v)))
            } else {
                bail!(
                    "{file}: Adam moments have {} entries, the model {} (or {} packed)",
                    m.len(),
                    params.len(),
                    flow.n_params()
                );
            }
        }
        _ => None,
    };
    Ok(Checkpoint {
        params,
        adam,
        step: num("step")? as u64,
        evaluated_epochs: num("evaluated_epochs")? as u64,
        best_acceptance: num("best_acceptance")?,
        elapsed_s: num("elapsed_s")?,
    })
}
