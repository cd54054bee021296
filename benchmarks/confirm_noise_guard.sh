#!/bin/sh
# 5-seed confirmations of the noise guard (issue 12); see bench_noise_guard.py.
# Run from the repository root with PYTHONPATH set. Results: figures/noise_guard_*.jsonl.
G='gated.05x1.3>.03'
R='ratio.05x1.3>.5,us0.0,chunk128,refresh0'
python benchmarks/bench_noise_guard.py --dataset noisy_digits --seeds 5 \
    --only "$G,us0.0,chunk128,refresh0" "$G,us0.0,chunk256,refresh0" "default(us0.5)" "us0.0" \
    "est.05x1.3,us0.0,chunk128,refresh0" "est.02x2,us0.0,chunk128,refresh0" "$R"
python benchmarks/bench_noise_guard.py --dataset mnist1d --seeds 5 \
    --only "$G,us0.0,chunk128,refresh0" "$G,us0.0,chunk256,refresh0" "default(us0.5)" \
    "est.05x1.3,us0.0,chunk128,refresh0" "est.02x2,us0.0,chunk128,refresh0" "$R"
for ln in 0.0 0.02 0.05; do
    python benchmarks/bench_noise_guard.py --dataset noisy_digits --label-noise $ln --seeds 5 \
        --only "$R" "default(us0.5)"
done
python benchmarks/bench_noise_guard.py --dataset noisy_digits --seeds 5 --only "$R,R2" "$R,R3"
python benchmarks/bench_noise_guard.py --dataset mnist1d --seeds 5 --only "$R,R3" "$R,R2"
