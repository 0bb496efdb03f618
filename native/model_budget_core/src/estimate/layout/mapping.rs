//! The host's memory map. With mmap, llama.cpp maps the part of the file
//! that holds the host's tensors as one range: from the first byte of the
//! first host tensor to the last byte of the last (llama-model-loader.cpp,
//! `get_mapping_range`, used by `load_all_data` for the `CPU_Mapped`
//! buffer). Whatever lies between counts, offloaded tensors included, so a
//! partly offloaded model may keep far more than its host tensors mapped:
//!
//! * a file in convert_hf_to_gguf's order (embeddings first, head last)
//!   with the head on the host maps all of it;
//! * a file converted shard by shard from a Hugging Face checkpoint lists
//!   blocks out of order (blk.10 before blk.6 within a shard), so the span
//!   reaches past offloaded blocks;
//! * a file written by llama-quantize since it sorts tensors by block
//!   (head and embeddings first) maps only the host's tensors.
//!
//! Tensors an extra CPU buffer takes (see `cpu_buffers`) live in that
//! buffer, not in the map: an untied head at the end of the file that AMX
//! takes leaves the range (Llama-3.1-8B maps 4,274 MiB, not 4,685).

use super::assign::{Home, LayerPlan};
use super::cpu_buffers::CpuBuffers;
use super::ModelShape;
use crate::model::{Part, Run};

/// The runs of `model`'s weights in file order: its own, or llama.cpp's
/// convert order when the model does not say.
fn runs(model: &ModelShape) -> Vec<Run> {
    if !model.file_order.is_empty() {
        return model.file_order.clone();
    }
    let mut runs = vec![Run {
        part: Part::Input,
        bytes: model.input_bytes,
        matrix: None,
    }];
    runs.extend(
        model
            .layer_bytes
            .iter()
            .enumerate()
            .map(|(il, &bytes)| Run {
                // il < n_layers <= 100_000 (validated).
                part: Part::Layer(il as u32),
                bytes,
                matrix: None,
            }),
    );
    runs.push(Run {
        part: Part::Output,
        bytes: model.output_bytes,
        matrix: None,
    });
    runs
}

/// Bytes of the host's mapped range under `plan`: from the first host
/// tensor that no extra buffer of `cpu` takes to the end of the last, 0
/// when the host maps none. Saturates at 2^64 (a header cannot describe
/// more).
pub fn host_span(model: &ModelShape, plan: &LayerPlan, cpu: CpuBuffers) -> u64 {
    let on_host = |part: Part| match part {
        Part::Input => true,
        Part::Layer(il) => plan.layers.get(il as usize) == Some(&Home::Ram),
        Part::Output => plan.output == Home::Ram,
    };
    let (mut at, mut first, mut end) = (0u64, None::<u64>, 0u64);
    for run in runs(model) {
        let next = at.saturating_add(run.bytes);
        let taken = run.matrix.is_some_and(|class| cpu.takes(&class));
        if on_host(run.part) && run.bytes > 0 && !taken {
            first.get_or_insert(at);
            end = next;
        }
        at = next;
    }
    first.map_or(0, |first| end - first)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::estimate::layout::tests::llama_8b;

    fn plan(n: usize, on_gpu: std::ops::Range<usize>, output: Home) -> LayerPlan {
        LayerPlan {
            layers: (0..n)
                .map(|i| {
                    if on_gpu.contains(&i) {
                        Home::Gpu(0)
                    } else {
                        Home::Ram
                    }
                })
                .collect(),
            output,
        }
    }

    fn run(part: Part, bytes: u64) -> Run {
        Run {
            part,
            bytes,
            matrix: None,
        }
    }

    const NONE: CpuBuffers = CpuBuffers::None;

    #[test]
    fn in_convert_order_a_host_head_keeps_the_whole_file_mapped() {
        let m = llama_8b();
        let all = m.input_bytes + m.layer_bytes.iter().sum::<u64>() + m.output_bytes;
        // Blocks 20..31 offloaded, the head on the host: everything mapped.
        assert_eq!(host_span(&m, &plan(32, 20..32, Home::Ram), NONE), all);
        // The head offloaded too: the embeddings and blocks 0..19 only.
        let host = m.input_bytes + 20 * m.layer_bytes[0];
        assert_eq!(host_span(&m, &plan(32, 20..32, Home::Gpu(0)), NONE), host);
        // Everything offloaded: the embeddings stay.
        assert_eq!(
            host_span(&m, &plan(32, 0..32, Home::Gpu(0)), NONE),
            m.input_bytes
        );
    }

    #[test]
    fn blocks_out_of_order_stretch_the_span_over_offloaded_ones() {
        // A shard lists block 3 between blocks 0 and 1.
        let m = ModelShape {
            layer_bytes: vec![10; 4],
            n_head_kv: vec![8; 4],
            layer_matrices: vec![],
            input_bytes: 100,
            output_bytes: 7,
            file_order: vec![
                run(Part::Input, 100),
                run(Part::Layer(0), 10),
                run(Part::Layer(3), 10),
                run(Part::Layer(1), 10),
                run(Part::Layer(2), 10),
                run(Part::Output, 7),
            ],
            ..llama_8b()
        };
        // Blocks 2 and 3 offloaded: block 3 lies inside the host's range.
        assert_eq!(host_span(&m, &plan(4, 2..4, Home::Gpu(0)), NONE), 130);
        // llama-quantize's order: head and embeddings first, then blocks.
        let sorted = ModelShape {
            file_order: vec![
                run(Part::Output, 7),
                run(Part::Input, 100),
                run(Part::Layer(0), 10),
                run(Part::Layer(1), 10),
                run(Part::Layer(2), 10),
                run(Part::Layer(3), 10),
            ],
            ..m.clone()
        };
        assert_eq!(host_span(&sorted, &plan(4, 2..4, Home::Gpu(0)), NONE), 120);
        assert_eq!(host_span(&sorted, &plan(4, 2..4, Home::Ram), NONE), 127);
    }

    #[test]
    fn matrices_an_extra_buffer_takes_leave_the_map_at_its_ends() {
        use crate::model::MatrixClass;
        let q4k = Some(MatrixClass::plain("Q4_K"));
        let q6k = Some(MatrixClass::plain("Q6_K"));
        let q3k = Some(MatrixClass::plain("Q3_K"));
        let m = ModelShape {
            layer_bytes: vec![30; 2],
            n_head_kv: vec![8; 2],
            layer_matrices: vec![],
            input_bytes: 100,
            output_bytes: 57,
            file_order: vec![
                run(Part::Input, 100),
                Run {
                    matrix: q4k,
                    ..run(Part::Layer(0), 20)
                },
                run(Part::Layer(0), 10),
                Run {
                    matrix: q3k,
                    ..run(Part::Layer(1), 30)
                },
                run(Part::Output, 7),
                Run {
                    matrix: q6k,
                    ..run(Part::Output, 50)
                },
            ],
            ..llama_8b()
        };
        let host = plan(2, 0..0, Home::Ram);
        // Nothing taken: the whole file.
        assert_eq!(host_span(&m, &host, NONE), 217);
        // AVX2 repacks the Q4_K run inside the range: it stays mapped.
        assert_eq!(host_span(&m, &host, CpuBuffers::X86Avx2), 217);
        // AMX takes the Q6_K head at the end: the range ends at the norm.
        assert_eq!(host_span(&m, &host, CpuBuffers::X86Amx), 167);
        // Everything but the embeddings offloaded, the head too.
        let offloaded = plan(2, 0..2, Home::Gpu(0));
        assert_eq!(host_span(&m, &offloaded, CpuBuffers::X86Amx), 100);
    }
}
