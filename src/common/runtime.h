// Process-wide runtime settings applied once by programs (CLI, benchmarks): glibc malloc keeps
// large freed blocks instead of returning them to the kernel on every step (training and
// decoding allocate the same large tensors over and over: measured 18.3 s -> 10.0 s for 4
// LLaVA steps on 2 cores), and intra-op threads default to the cores when OMP_NUM_THREADS is unset.
#pragma once

namespace vadapt {

enum class Workload { kInference, kTraining };

// Training runs many small GEMMs between torch's own kernels: OpenBLAS is kept single-threaded
// so that its pool does not spin against torch's OpenMP pool (3 LLaVA steps: 12.9 s -> 9.2 s).
// Inference leaves OpenBLAS multi-threaded: its large f32 GEMMs are where the time goes
// (110M-shape decode: 33 tok/s with OpenBLAS threads vs 18 tok/s without).
void configure_runtime(Workload w = Workload::kInference);

}  // namespace vadapt
