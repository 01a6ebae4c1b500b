//! Timing dispatches: GPU timestamp queries around each dispatch in a pass of its own, or wall
//! clock (submit and wait per dispatch) where the adapter has no timestamps.

use super::{Dispatch, Gpu, buffers::map_and_copy};
use anyhow::Result;
use std::time::Instant;

/// Queries per resolve; wgpu caps a query set at 4096.
const MAX_QUERIES: usize = 4096;

impl Gpu {
    /// Seconds each dispatch takes, the median of `reps` runs. Each dispatch runs alone in its
    /// own compute pass, in the given order (so its inputs hold what the step before left).
    pub fn time_dispatches(&self, dispatches: &[&Dispatch], reps: usize) -> Result<Vec<f64>> {
        let mut samples = vec![Vec::with_capacity(reps); dispatches.len()];
        for _ in 0..reps {
            let times = if self.has_timestamps() {
                self.timestamps_once(dispatches)?
            } else {
                self.wall_once(dispatches)?
            };
            for (s, t) in samples.iter_mut().zip(times) {
                s.push(t);
            }
        }
        Ok(samples.into_iter().map(median).collect())
    }

    fn timestamps_once(&self, dispatches: &[&Dispatch]) -> Result<Vec<f64>> {
        let period = self.queue.get_timestamp_period() as f64 * 1e-9;
        let mut out = Vec::with_capacity(dispatches.len());
        for chunk in dispatches.chunks(MAX_QUERIES / 2) {
            let n = (2 * chunk.len()) as u32;
            let set = self.device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("bench"),
                ty: wgpu::QueryType::Timestamp,
                count: n,
            });
            let size = n as u64 * 8;
            let resolve = self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("timestamps"),
                size,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            });
            let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("timestamps readback"),
                size,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            let mut enc = self
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("bench"),
                });
            for (i, d) in chunk.iter().enumerate() {
                let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some(&d.label),
                    timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                        query_set: &set,
                        beginning_of_pass_write_index: Some(2 * i as u32),
                        end_of_pass_write_index: Some(2 * i as u32 + 1),
                    }),
                });
                d.record(&mut pass);
            }
            enc.resolve_query_set(&set, 0..n, &resolve, 0);
            enc.copy_buffer_to_buffer(&resolve, 0, &staging, 0, size);
            self.queue.submit([enc.finish()]);
            let ticks: Vec<u64> = map_and_copy(self, &staging)?;
            out.extend(
                ticks
                    .chunks(2)
                    .map(|t| t[1].saturating_sub(t[0]) as f64 * period),
            );
        }
        Ok(out)
    }

    fn wall_once(&self, dispatches: &[&Dispatch]) -> Result<Vec<f64>> {
        dispatches
            .iter()
            .map(|d| {
                let t = Instant::now();
                self.run(&[d])?;
                Ok(t.elapsed().as_secs_f64())
            })
            .collect()
    }
}

pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}
