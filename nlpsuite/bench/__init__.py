"""`nlpsuite bench`: our service against PyTorch peers and the bare ONNX Runtime limit, on the same texts.

Modules: texts (length-mixed real texts), procs (child processes, /proc figures), bare (the in-process ORT
limit), torch_models and peers (the PyTorch baselines), load (the closed-loop gRPC load generator),
recommend (item cache warm vs cold), report (JSON, markdown, PNG and the acceptance checks), run (the order).
Serving code never imports this package.
"""
