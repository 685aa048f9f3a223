"""Deploy: int8 and fp32 ONNX models in ONNX Runtime against PyTorch eager fp32, streaming and
offline, on this CPU; and what int8 costs in top-1.

Speed (random weights: the kernels do not care about the values; calibrated on random inputs,
streamed through the fp32 model for the buffers):

- streaming MobileNetV2-TSM at 224 px (400 classes), one frame a step with its shift buffers:
  PyTorch eager fp32 (``StreamingTSM``), our fp32 ONNX file (the buffer splice as Slice/Concat)
  and the same model exported with the in-place splice (ScatterND), and the int8 model in each
  configuration worth trying on x86: QDQ or QOperator, per-channel or per-tensor weight scales,
  unsigned or signed activations, 7-bit weights (reduce_range), the shift's Slice/Concat or
  the depthwise convolutions left in fp32, ONNX Runtime's graph optimisation level;
- offline TSM-ResNet-50, 8 frames of 224 px, batch 1: PyTorch eager fp32, fp32 ONNX, int8.

Each group is timed interleaved rep after rep (``common.interleaved_medians``) on one thread
and on every core; ONNX Runtime's idle threads do not spin (they would steal the CPU from the
next model of the round). Ratios are what to compare: the machine is shared.

Accuracy (``--demo DIR``, and ``--seeds``: a fresh ``tsm demo`` on each held-out seed): the
online model converted with ``--precision int8`` (calibrated on the training list, checked on
its held-back clips) and the offline TSM exported with ``tsm export --precision int8``, both
scored on the validation list against their fp32 models.

    .venv/bin/python bench/deploy.py [--seconds 20] [--demo /tmp/quiet/demo_out] [--seeds 1,2]
    .venv/bin/python bench/deploy.py --quick   # checks the script, not the numbers
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved_medians, load_average, load_line, write_section  # noqa: E402

from tsmcli.model.export import export_module, export_onnx, spliced_for_onnx  # noqa: E402
from tsmcli.model.quantize import DEFAULT_INT8, Int8Config, quantize_onnx  # noqa: E402
from tsmcli.model.runtime import open_session  # noqa: E402
from tsmcli.model.streaming import StreamingTSM  # noqa: E402
from tsmcli.model.tsn import build_model  # noqa: E402

SIZE = 224
CONFIGS = {  # name -> (config, graph, optimisation level)
    "int8 default (qdq u8s8 per-channel)": (DEFAULT_INT8, "spliced", "all"),
    "int8 qdq u8s8 per-tensor": (Int8Config(per_channel=False), "spliced", "all"),
    "int8 qoperator u8s8 per-channel": (Int8Config(format="qoperator"), "spliced", "all"),
    "int8 qdq s8s8 per-channel": (Int8Config(activations="s8"), "spliced", "all"),
    "int8 qdq u8s8 reduce-range": (Int8Config(reduce_range=True), "spliced", "all"),
    "int8 qdq, Slice/Concat in fp32": (Int8Config(float_ops=("Slice", "Concat")), "spliced", "all"),
    "int8 qdq, depthwise in fp32": (Int8Config(float_depthwise=True), "spliced", "all"),
    "int8 default, ScatterND graph": (DEFAULT_INT8, "scatter", "all"),
    "int8 default, optimisation basic": (DEFAULT_INT8, "spliced", "basic"),
}


def thread_counts() -> list[int]:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return sorted({1, cores or 1})


def session_run(path: Path, threads: int, feed: dict, optimization: str = "all"):
    session = open_session(path, threads=threads, optimization=optimization, spinning=False)
    return lambda: session.run(None, feed)


# ------------------------------------------------------------------------------ streaming


def streaming_files(work: Path, quick: bool) -> tuple[StreamingTSM, dict[str, Path], list[dict]]:
    """MobileNetV2-TSM one-way at 224: its fp32 ONNX files (spliced, scatter) and the int8
    file of every configuration, calibrated on random frames streamed through fp32."""
    torch.manual_seed(0)
    model = build_model("mobilenet_v2", num_classes=400, num_segments=8, shift="unidirectional")
    streaming = StreamingTSM(model.eval()).eval()
    frame, buffers = torch.randn(1, 3, SIZE, SIZE), streaming.initial_buffers(SIZE, SIZE)
    files = {"spliced": work / "stream_spliced.onnx", "scatter": work / "stream_scatter.onnx"}
    with torch.no_grad():
        export_onnx(spliced_for_onnx(streaming), frame, buffers, files["spliced"], 18)
        export_onnx(streaming, frame, buffers, files["scatter"], 18)
    session = open_session(files["spliced"])
    names = [i.name for i in session.get_inputs()]
    feeds, state = [], [b.numpy() for b in buffers]
    for _ in range(4 if quick else 32):
        frame = np.random.randn(1, 3, SIZE, SIZE).astype(np.float32)
        feed = dict(zip(names, [frame, *state], strict=True))
        feeds.append(feed)
        state = session.run(None, feed)[1:]
    for name, (config, graph, _) in CONFIGS.items():
        path = work / f"stream_{len(files)}.onnx"
        if (config, graph) == (DEFAULT_INT8, "spliced") and "default" in files:
            files[name] = files["default"]
            continue
        quantize_onnx(files[graph], path, iter(feeds), config)
        files[name] = path
        if (config, graph) == (DEFAULT_INT8, "spliced"):
            files["default"] = path
    return streaming, files, feeds


def time_streaming(streaming, files, feeds, threads: int, reps: int) -> dict[str, float]:
    feed = feeds[-1]
    frame = torch.from_numpy(feed["frame"])
    buffers = [torch.from_numpy(v) for k, v in feed.items() if k != "frame"]
    torch.set_num_threads(threads)

    def eager():
        with torch.inference_mode():
            streaming(frame, *buffers)

    runs = {"PyTorch eager fp32": eager}
    runs["ONNX fp32 (ours: Slice/Concat)"] = session_run(files["spliced"], threads, feed)
    runs["ONNX fp32, ScatterND graph"] = session_run(files["scatter"], threads, feed)
    runs["ONNX fp32, optimisation basic"] = session_run(files["spliced"], threads, feed, "basic")
    for name, (_, _, level) in CONFIGS.items():
        runs[name] = session_run(files[name], threads, feed, level)
    return {name: 1000 * s for name, s in interleaved_medians(runs, reps, warmup=3).items()}


# ------------------------------------------------------------------------------ offline


def time_offline(work: Path, reps: int, quick: bool) -> dict[int, dict[str, float]]:
    """TSM-R50 8x224 batch 1: eager fp32, fp32 ONNX, int8 (default and QOperator)."""
    torch.manual_seed(0)
    model = build_model("resnet50", num_classes=400, num_segments=8, shift="bidirectional").eval()
    clip = torch.randn(1, 8, 3, SIZE, SIZE)
    fp32 = work / "r50.onnx"
    export_module(model, (clip,), fp32, 18, inputs=["clip"], outputs=["logits"])
    feeds = [{"clip": torch.randn(1, 8, 3, SIZE, SIZE).numpy()} for _ in range(2 if quick else 6)]
    files = {"ONNX fp32": fp32}
    for name, config in (
        ("int8 default", DEFAULT_INT8),
        ("int8 qoperator", Int8Config("qoperator")),
    ):
        files[name] = work / f"r50_{len(files)}.onnx"
        quantize_onnx(fp32, files[name], iter(feeds), config)
    found = {}
    for threads in thread_counts():
        torch.set_num_threads(threads)

        def eager():
            with torch.inference_mode():
                model(clip)

        runs = {"PyTorch eager fp32": eager}
        for name, path in files.items():
            runs[name] = session_run(path, threads, {"clip": clip.numpy()})
        found[threads] = {k: 1000 * s for k, s in interleaved_medians(runs, reps).items()}
    found["bytes"] = {name: path.stat().st_size for name, path in files.items()}
    return found


# ------------------------------------------------------------------------------ accuracy


def demo_accuracy(demo: Path, work: Path) -> dict[str, float]:
    """The demo's online model converted int8 (calibrated on its training list) and its
    offline TSM exported int8, each scored on the validation list against fp32."""
    from tsmcli.engine.convert import convert_online
    from tsmcli.engine.deploy import export_model
    from tsmcli.engine.evaluate import run_eval
    from tsmcli.engine.online import evaluate_online

    lists, frames = demo / "lists", demo / "frames"
    calib = {"precision": "int8", "calib_list": lists / "train.txt", "root": frames}
    stride = json.loads((demo / "online" / "report.json").read_text())["frame_stride"]
    online = work / f"{demo.name}_online"
    converted = convert_online(
        demo / "runs" / "tsm_online" / "last.pt", online, stride=stride, **calib
    )
    offline = work / f"{demo.name}_offline"
    export_model(demo / "runs" / "tsm" / "last.pt", offline, **calib)
    val = lists / "val.txt"
    out = {"logit error": converted.precisions["int8"]["checks"]["logit_error"]}
    for precision in ("fp32", "int8"):
        streamed = evaluate_online(online, val, frames, source="frames", precision=precision)
        clip = run_eval(val, frames, model_dir=offline, precision=precision, workers=0)
        out[f"streaming {precision}"], out[f"offline {precision}"] = streamed.top1, clip.top1
        out["videos"] = clip.num_videos
    return out


def seed_demo(seed: int, work: Path) -> Path:
    from tsmcli.showcase import demo

    out = work / f"demo_seed{seed}"
    demo(out, seed=seed)
    return out


# ------------------------------------------------------------------------------ report


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    return "\n".join([*lines, *("| " + " | ".join(row) + " |" for row in rows)])


def streaming_body(times: dict[int, dict[str, float]]) -> str:
    threads = sorted(times)
    header = [
        "MobileNetV2-TSM 224, streaming",
        *(f"{t} thread{'s' * (t > 1)} ms/frame" for t in threads),
    ]
    header += [f"x ONNX fp32 ({t}t)" for t in threads] + [f"x eager ({t}t)" for t in threads]
    rows = []
    for name in times[threads[0]]:
        ms = [times[t][name] for t in threads]
        rows.append(
            [name, *(f"{m:.2f}" for m in ms)]
            + [
                f"{times[t][name] / times[t]['ONNX fp32 (ours: Slice/Concat)']:.3f}"
                for t in threads
            ]
            + [f"{times[t][name] / times[t]['PyTorch eager fp32']:.3f}" for t in threads]
        )
    return table(header, rows)


def offline_body(found: dict) -> str:
    threads = sorted(k for k in found if isinstance(k, int))
    header = ["TSM-R50 8x224, batch 1", *(f"{t} thread{'s' * (t > 1)} ms/clip" for t in threads)]
    header += [f"x eager ({t}t)" for t in threads] + ["file MiB"]
    rows = []
    for name in found[threads[0]]:
        size = found["bytes"].get(name)
        rows.append(
            [name, *(f"{found[t][name]:.0f}" for t in threads)]
            + [f"{found[t][name] / found[t]['PyTorch eager fp32']:.3f}" for t in threads]
            + [f"{size / 2**20:.1f}" if size else "-"]
        )
    return table(header, rows)


def accuracy_body(results: dict[str, dict[str, float]]) -> str:
    rows = []
    for label, r in results.items():
        for kind in ("streaming", "offline"):
            fp32, int8 = r[f"{kind} fp32"], r[f"{kind} int8"]
            error = f"{r['logit error']:.3f}" if kind == "streaming" else "-"
            rows.append(
                [label, kind, str(r["videos"]), f"{fp32:.1f}", f"{int8:.1f}", f"{int8 - fp32:+.1f}"]
                + [error]
            )
    header = ["set", "model", "val videos", "fp32 top-1", "int8 top-1", "int8 - fp32"]
    return table([*header, "streaming logit error (RMS / RMS)"], rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=60, help="interleaved reps, streaming")
    parser.add_argument("--offline-reps", type=int, default=8)
    parser.add_argument("--demo", type=Path, default=None, help="a tsm demo output dir")
    parser.add_argument("--seeds", default="", help="held-out seeds to run the demo on")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.reps, args.offline_reps = 3, 2
    before = load_average()
    begin = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tsm-deploy-") as tmp:
        work = Path(tmp)
        streaming, files, feeds = streaming_files(work, args.quick)
        sizes = {name: path.stat().st_size / 2**20 for name, path in files.items()}
        stream_times = {
            t: time_streaming(streaming, files, feeds, t, args.reps) for t in thread_counts()
        }
        offline = time_offline(work, args.offline_reps, args.quick)
        accuracy = {}
        if args.demo is not None:
            accuracy[f"demo ({args.demo.name}, seed 0)"] = demo_accuracy(args.demo, work)
        for seed in [int(s) for s in args.seeds.split(",") if s]:
            accuracy[f"tsm synth seed {seed}"] = demo_accuracy(seed_demo(seed, work), work)
    after = load_average()
    body = render(args, stream_times, offline, accuracy, sizes, before, after)
    body += f"\n\nWall time {time.perf_counter() - begin:.0f} s.\n"
    print(body)
    path = write_section(
        "deploy", "Deploy: int8 and fp32 in ONNX Runtime, against PyTorch (CPU)", body
    )
    print(f"wrote {path}")
    return 0


def render(args, stream_times, offline, accuracy, sizes, before, after) -> str:
    from tsmcli.engine.precision import cpu_flags, native_bf16

    flags = cpu_flags()
    vnni = "with" if {"avx512_vnni", "avx_vnni"} & flags else "without"
    bf16 = "native" if native_bf16(torch.device("cpu")) else "not native (emulated): not measured"
    parts = [
        f"This CPU: {vnni} VNNI, bf16 {bf16}. {load_line(before, after)}.",
        f"Streaming: median of {args.reps} interleaved reps; file sizes fp32 "
        f"{sizes.get('spliced', 0):.1f} MiB, int8 {sizes.get('int8 default (qdq u8s8 per-channel)', 0):.1f} MiB.",
        streaming_body(stream_times),
        f"Offline: median of {args.offline_reps} interleaved reps.",
        offline_body(offline),
    ]
    if accuracy:
        parts += [
            "Top-1 of int8 against fp32 on the validation lists (percent):",
            accuracy_body(accuracy),
        ]
    return "\n\n".join(parts)


if __name__ == "__main__":
    sys.exit(main())
