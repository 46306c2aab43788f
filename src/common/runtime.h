// Process-wide runtime settings applied once by programs (CLI, benchmarks): glibc malloc keeps
// large freed blocks instead of returning them to the kernel on every step (training and
// decoding allocate the same large tensors over and over: measured 18.3 s -> 10.0 s for 4
// LLaVA steps on 2 cores), and intra-op threads default to the cores when OMP_NUM_THREADS is unset.
#pragma once

namespace vadapt {

enum class Workload { kInference, kTraining };

// Training runs many small GEMMs between torch's own kernels: OpenBLAS is kept single-threaded
// so that its pool does not spin against torch's OpenMP pool (3 LLaVA steps: 12.9 s -> 9.2 s).
// Inference keeps libtorch's thread defaults: its large f32 GEMMs run on OpenBLAS's own
// threads, and a second busy pool beside them slows everything (110M-shape f32 decode on 2
// cores: 33 tok/s with the defaults, 20 tok/s with 2 torch threads, 18 with single-threaded BLAS).
void configure_runtime(Workload w = Workload::kInference);

}  // namespace vadapt
