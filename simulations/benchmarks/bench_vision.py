"""Image-setting throughput and the cost of one AL round with a frozen backbone (issue #5).

    .venv/bin/python -m simulations.benchmarks.bench_vision [--quick] [--threads N] [--device cpu]

Writes ``simulations/benchmarks/results/vision.md``:

A. feature extraction, images/s: ResNet-18 / ResNet-50 on synthetic 32×32 RGB images;
B. one training step (forward + backward + SGD step, batch 64), images/s: the full model
   (backbone + head) against the head alone on cached features (``freeze-backbone``), with the
   ratio;
C. one AL round at the paper's scale (100 clients × 500 images, 1,000 → 12,000 labels, defaults
   of fedal.config: fl-rounds 10, local-epochs 2, batch 64, pseudo-epochs 4, V = 5, W = 200) in
   frozen mode, with the library's pure functions (fedal.training, fedal.feature_cache,
   fedal.selection, fedal.diffusion) and no Flower: no serialisation, no message
   passing, one process. Feature extraction is a one-off cost and reported separately.

Synthetic data: pixels are uniform noise; in the full run the features of C come from really
extracting those images (through ``cached_features``), in ``--quick`` they are random and the
extraction is estimated from A. Costs do not depend on the values. The code takes ``--device``;
only CPU was available when the committed results were produced. Wall and process-CPU time are
both reported because our machines are shared.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fedal.backbones import BackboneTransform, build_backbone
from fedal.config import DEFAULTS
from fedal.devices import resolve_device
from fedal.feature_cache import FeatureCache, cached_features, extract_features
from fedal.models import FedALModel, Identity
from fedal.training import evaluate, predict, pseudo_update, train_local
from fedal.uncertainty import entropy

RESULTS = Path(__file__).resolve().parent / "results" / "vision.md"

# Paper scale (seeds/001 §5); the protocol and training settings of C are fedal.config's defaults,
# read at run time so that the benchmark follows the configuration (the report prints them).
CLIENTS, PER_CLIENT, TEST_SIZE, NUM_CLASSES = 100, 500, 10_000, 10
BATCH = 64  # section B's step batch
FL_ROUNDS, LOCAL_EPOCHS = DEFAULTS["fl-rounds"], DEFAULTS["local-epochs"]
AL_BATCH, LR = DEFAULTS["batch-size"], DEFAULTS["learning-rate"]
PSEUDO_OPTIMIZER, PSEUDO_EPOCHS, PSEUDO_PARAMS = (DEFAULTS["pseudo-optimizer"], DEFAULTS["pseudo-epochs"],
                                                   DEFAULTS["pseudo-params"])
V, W, INIT_POINTS = DEFAULTS["clients-per-round"], DEFAULTS["points-per-client"], DEFAULTS["init-points"]
AL_ROUNDS = DEFAULTS["al-rounds"]


def _load() -> str:
    try:
        return "/".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


class Clock:
    """Wall and process-CPU seconds of a block. On a shared machine the wall time includes waiting
    for a core; with one torch thread the CPU time is close to what an idle core would take."""

    def __enter__(self):
        self._w, self._c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self._w
        self.cpu = time.process_time() - self._c
        return False

    def pair(self, scale: float = 1.0) -> dict:
        return {"wall": self.wall * scale, "cpu": self.cpu * scale}


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


# --------------------------------------------------------------------------- A. extraction

def bench_extraction(name: str, n: int, dev: torch.device, batch_size: int = 256) -> dict:
    bb = build_backbone(name, seed=0)
    tr = BackboneTransform()
    x = _images(n)
    extract_features(bb, x[:batch_size], batch_size=batch_size, device=dev, transform=tr)  # warm-up
    _sync(dev)
    with Clock() as c:
        f = extract_features(bb, x, batch_size=batch_size, device=dev, transform=tr)
        _sync(dev)
    return {"backbone": name, "images": n, "seconds": c.wall, "cpu_seconds": c.cpu,
            "images_per_s": n / c.wall, "images_per_cpu_s": n / c.cpu, "out_dim": f.shape[1]}


# --------------------------------------------------------------------------- B. training step

def _step_rate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, dev) -> tuple[float, float]:
    model.to(dev).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    x, y = x.to(dev), y.to(dev)

    def step():
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()

    for _ in range(2):  # warm-up (allocator, oneDNN primitives)
        step()
    _sync(dev)
    with Clock() as c:
        for _ in range(steps):
            step()
        _sync(dev)
    return steps * len(x) / c.wall, steps * len(x) / c.cpu


def bench_train_step(name: str, full_steps: int, head_steps: int, dev: torch.device) -> dict:
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, NUM_CLASSES, (BATCH,), generator=g)
    bb = build_backbone(name, seed=0)
    full = FedALModel(bb, NUM_CLASSES)
    x_img = BackboneTransform()(_images(BATCH))
    full_rate, full_cpu = _step_rate(full, x_img, y, full_steps, dev)
    head = FedALModel(Identity(bb.out_dim), NUM_CLASSES)
    feats = torch.relu(torch.randn(BATCH, bb.out_dim, generator=g))
    head_rate, head_cpu = _step_rate(head, feats, y, head_steps, dev)
    return {"backbone": name, "full_steps": full_steps, "head_steps": head_steps,
            "full_images_per_s": full_rate, "head_images_per_s": head_rate, "ratio": head_rate / full_rate,
            "full_images_per_cpu_s": full_cpu, "head_images_per_cpu_s": head_cpu, "cpu_ratio": head_cpu / full_cpu}


# --------------------------------------------------------------------------- C. AL round

def _fedavg(states: list[dict], weights: list[int]) -> dict:
    w = np.asarray(weights, dtype=np.float64) / np.sum(weights)
    return {k: sum(float(wi) * s[k] for wi, s in zip(w, states)) for k in states[0]}


def bench_al_round(extract_rate: dict[str, dict], labels_list: list[int], probe_clients: int,
                   real_extraction: bool, dev: torch.device, seed: int = 0) -> dict:
    """Times of the parts of one frozen-backbone AL round; every entry is {"wall", "cpu"} seconds."""
    rng = np.random.default_rng(seed)
    dim = 512  # ResNet-18 features
    feats = np.maximum(rng.normal(size=(CLIENTS, PER_CLIENT, dim)), 0).astype(np.float32)
    y = rng.integers(0, NUM_CLASSES, (CLIENTS, PER_CLIENT))
    x_test = np.maximum(rng.normal(size=(TEST_SIZE, dim)), 0).astype(np.float32)
    y_test = rng.integers(0, NUM_CLASSES, TEST_SIZE)
    torch.manual_seed(seed)
    global_model = FedALModel(Identity(dim), NUM_CLASSES)
    out: dict = {"extraction": {}, "train": {}, "notes": []}

    n_images = CLIENTS * PER_CLIENT
    for name, r in extract_rate.items():
        out["extraction"][name] = {"wall": n_images / r["wall"], "cpu": n_images / r["cpu"]}

    if real_extraction:
        # The real one-off path of a ClientApp, for every client: build ResNet-18, load a local
        # weights file, extract its 500 images, write the FeatureCache entry; then the per-round
        # path (a cache hit: fingerprint the images, read the .npy).
        with tempfile.TemporaryDirectory() as d:
            w = Path(d) / "resnet18.pt"
            torch.save(build_backbone("resnet18", seed=0).state_dict(), w)
            cache = FeatureCache(Path(d) / "cache")
            tr = BackboneTransform()

            def client_features(cl):
                return cached_features(cache, _images(PER_CLIENT, seed=cl), backbone_name="resnet18",
                                       weights=str(w), transform=tr, dataset="synthetic-cifar",
                                       partition=cl, batch_size=250, device=dev)

            with Clock() as cw:
                for cl in range(CLIENTS):
                    feats[cl] = client_features(cl)
            with Clock() as cr:
                for cl in range(CLIENTS):
                    client_features(cl)
            assert cache.misses == CLIENTS and cache.hits == CLIENTS
        out["extraction_measured"] = cw.pair()
    else:
        # quick: write/read the cache with synthetic features (extraction estimated from A)
        with tempfile.TemporaryDirectory() as d:
            cache = FeatureCache(d)
            keys = [{"client": cl, "bench": True} for cl in range(CLIENTS)]
            with Clock() as cw:
                for cl, k in enumerate(keys):
                    cache.get_or_compute(k, lambda cl=cl: feats[cl])
            with Clock() as cr:
                for k in keys:
                    cache.get_or_compute(k, lambda: None)
        out["extraction_measured"] = None
        out["cache_write"] = cw.pair()
    out["cache_read"] = cr.pair()

    # 1. FL training of the head on L labels: L/200 labelled clients, FedAvg weighted by labels
    for labels in labels_list:
        n_lab_clients = labels // INIT_POINTS
        with Clock() as c:
            state = copy.deepcopy(global_model.state_dict())
            for r in range(FL_ROUNDS):
                states, sizes = [], []
                for cl in range(n_lab_clients):
                    local = FedALModel(Identity(dim), NUM_CLASSES)
                    local.load_state_dict(state)
                    train_local(local, feats[cl, :INIT_POINTS], y[cl, :INIT_POINTS], epochs=LOCAL_EPOCHS,
                                batch_size=AL_BATCH, lr=LR, seed=r * 1000 + cl)
                    states.append(local.state_dict())
                    sizes.append(INIT_POINTS)
                state = _fedavg(states, sizes)
            global_model.load_state_dict(state)
            evaluate(global_model, x_test, y_test)
        out["train"][labels] = c.pair()

    # 2. probing: every client predicts on its unlabeled features (g = mean entropy) and runs the
    # pseudo-label head updates (docs/method.md, "Pseudo-updates"). Timed on `probe_clients` clients, scaled to 100.
    unl = PER_CLIENT - INIT_POINTS  # a client that has given W points: 300 unlabelled
    m_all, g = [], np.zeros(CLIENTS)
    with Clock() as c:
        for cl in range(probe_clients):
            probs, _ = predict(global_model, feats[cl, :unl])
            g[cl] = entropy(probs).mean()
            local = copy.deepcopy(global_model)
            # one recorded round's update (T' = 1 here), as (1, D) like a probe reply
            m_all.append(pseudo_update(local, feats[cl, :unl], optimizer=PSEUDO_OPTIMIZER, epochs=PSEUDO_EPOCHS,
                                       batch_size=AL_BATCH, lr=LR, seed=cl, scope=PSEUDO_PARAMS,
                                       probs=probs)[None, :])
    out["probe"] = c.pair(CLIENTS / probe_clients)
    out["probe_measured_clients"] = probe_clients
    out["pseudo_param_dim"] = int(m_all[0].shape[1])
    # clients not probed: perturbed copies (only the server-side cost below depends on them)
    m = np.stack([m_all[cl % probe_clients] + 1e-3 * rng.normal(size=m_all[0].shape).astype(np.float32)
                  for cl in range(CLIENTS)])
    g[probe_clients:] = rng.uniform(0.5, 2.0, CLIENTS - probe_clients)

    # 3. server: order of all eligible clients by diffusion (docs/method.md, "Client graph", "Impact, score, greedy"; Algorithm 1)
    try:
        from fedal.selection import ClientStats, order_clients

        stats = ClientStats(entropy=g, n_unlabeled=np.full(CLIENTS, unl), embeddings=m,
                            prev_entropy=g * rng.uniform(0.9, 1.1, CLIENTS))
        with Clock() as c:
            order = order_clients("diffusion", stats, np.random.default_rng(seed))
        out["client_selection"] = c.pair()
        chosen = [int(i) for i in order[:V]]
    except ImportError as e:
        out["client_selection"] = None
        out["notes"].append(f"client-level diffusion not timed: {e}")
        chosen = list(range(V))

    # 4. local batch on the V chosen clients: embeddings + entropy, then local diffusion (docs/method.md, "Local batch")
    try:
        from fedal.diffusion import select_points
    except ImportError as e:
        select_points = None
        out["notes"].append(f"local diffusion selection not timed: {e}")
    with Clock() as c:
        for cl in chosen:
            probs, emb = predict(global_model, feats[cl])
            k = entropy(probs)
            labeled = np.zeros(PER_CLIENT, dtype=bool)
            labeled[:INIT_POINTS] = True
            k[labeled] = 0.0
            if select_points is not None:
                select_points(emb, k, labeled, n=W)
    out["local_selection"] = c.pair()
    out["local_selection_complete"] = select_points is not None
    return out


# --------------------------------------------------------------------------- report

def _optimizer_name() -> str:
    from fedal.training import make_optimizer

    return type(make_optimizer([torch.zeros(1, requires_grad=True)], LR)).__name__


def _fmt(v: float | None) -> str:
    if v is None:
        return "not measured"
    if v >= 100:
        return f"{v:,.0f} s"
    return f"{v:.2f} s" if v >= 1 else f"{v * 1000:.0f} ms"


def _wc(p: dict | None) -> str:
    return "not measured" if p is None else f"{_fmt(p['wall'])} ({_fmt(p['cpu'])})"


def _fixed(al: dict, kind: str) -> float:
    parts = [al["probe"], al["client_selection"], al["local_selection"], al["cache_read"]]
    return sum(p[kind] for p in parts if p is not None)


def render(res: dict) -> str:
    env = res["env"]
    al = res["al_round"]
    L = [f"# Vision benchmark ({'quick' if res['quick'] else 'full'} run)", "",
         f"`{res['command']}` on {env['date']}: {env['device']}, torch {env['torch']}, "
         f"{env['threads']} torch thread(s), {env['cores']} cores. Total wall time {res['wall_s']:.0f} s.", "",
         f"**The machine is shared.** Load average before / after: {env['load_before']} / "
         f"{env['load_after']} on {env['cores']} cores, i.e. other jobs kept the CPU busy. Every "
         "number is therefore given twice: wall clock, and in parentheses (or as a separate column) "
         "the process CPU time, which with one torch thread approximates an idle core. One thread "
         "because two OpenMP threads on a busy 2-core machine spin-wait on each other (head steps "
         "were ~50× slower than with one thread in a trial run); rerun with `--threads 2` on an "
         "idle machine.", "",
         "Synthetic uint8 32×32×3 images (values do not affect cost). The code takes `--device "
         "cuda`; that path was not run: no GPU on this machine.", "",
         "## A. Feature extraction (eval mode, inference_mode, batch 256, ImageNet normalisation)", "",
         "| backbone | out_dim | images | wall s | images/s (wall) | images/s (CPU time) |",
         "|---|---:|---:|---:|---:|---:|"]
    for r in res["extraction"]:
        L.append(f"| {r['backbone']} | {r['out_dim']} | {r['images']:,} | {r['seconds']:.1f} | "
                 f"{r['images_per_s']:,.0f} | {r['images_per_cpu_s']:,.0f} |")
    L += ["", "## B. One training step (forward + backward + SGD with momentum, batch 64)", "",
          "Full model = ResNet + the paper's head on images, BatchNorm in train mode; frozen = "
          "the head alone (3×200 FC + classifier) on cached features (`freeze-backbone`).", "",
          "| backbone | full model, images/s | frozen head on cached features, images/s | speed-up | "
          "same on CPU time: full / frozen / speed-up |", "|---|---:|---:|---:|---:|"]
    for r in res["train_step"]:
        L.append(f"| {r['backbone']} | {r['full_images_per_s']:,.1f} | {r['head_images_per_s']:,.0f} | "
                 f"{r['ratio']:,.0f}× | {r['full_images_per_cpu_s']:,.1f} / {r['head_images_per_cpu_s']:,.0f}"
                 f" / {r['cpu_ratio']:,.0f}× |")
    L += ["", "## C. One AL round at paper scale, frozen ResNet-18 (pure functions, no Flower)", "",
          f"Approximation of one round with the library's functions in one process — Flower's "
          f"messaging, serialisation and actor start-up are not included. {CLIENTS} clients × "
          f"{PER_CLIENT} images; settings = fedal.config defaults at run time. Training: fl-rounds "
          f"{FL_ROUNDS} × local-epochs {LOCAL_EPOCHS}, batch {AL_BATCH}, {_optimizer_name()} lr {LR} (`fedal.training.train_local`), FedAvg weighted by labels, every "
          f"labelled client holding {INIT_POINTS} labels, then evaluation on {TEST_SIZE:,} cached test "
          f"features. Probing: `predict` + `pseudo_update` ({PSEUDO_OPTIMIZER}, pseudo-epochs {PSEUDO_EPOCHS}, "
          f"pseudo-params {PSEUDO_PARAMS} → D = {al['pseudo_param_dim']:,}) on 300 unlabelled features per "
          f"client, measured on {al['probe_measured_clients']} clients and scaled to {CLIENTS}. "
          f"Client selection: `fedal.selection.order_clients('diffusion')` over all "
          f"{CLIENTS} clients. Local selection: `predict` + entropy + `fedal.diffusion.select_points` "
          f"(W = {W}) on each of V = {V} chosen clients (500 nodes, 200-d embeddings).", "",
          "One-off, amortised over the run — wall (CPU):", "", "| step | time |", "|---|---:|"]
    if al["extraction_measured"] is not None:
        L.append(f"| **measured**: {CLIENTS} clients × `cached_features` miss = build ResNet-18 + load a "
                 f"local weights file + extract {PER_CLIENT} images + write the cache entry | "
                 f"{_wc(al['extraction_measured'])} |")
    for name, t in al["extraction"].items():
        L.append(f"| estimate: extraction alone, {CLIENTS * PER_CLIENT:,} images with {name} (at A's rate) | {_wc(t)} |")
    if al.get("cache_write") is not None:
        L.append(f"| write {CLIENTS} clients' features into the FeatureCache (500×512 float32 each) | {_wc(al['cache_write'])} |")
    L += ["", "Per AL round — wall (CPU):", "",
          "| labelled points | FL training of the head + eval | probing, 100 clients | "
          "client selection | local selection, 5 clients | cache hits, 100 clients | round total |",
          "|---:|---:|---:|---:|---:|---:|---:|"]
    for labels, t in al["train"].items():
        tot = {k: t[k] + _fixed(al, k) for k in ("wall", "cpu")}
        L.append(f"| {int(labels):,} | {_wc(t)} | {_wc(al['probe'])} | {_wc(al['client_selection'])} | "
                 f"{_wc(al['local_selection'])}{'' if al['local_selection_complete'] else ' *'} | "
                 f"{_wc(al['cache_read'])} | {_wc(tot)} |")
    rt = al["run_total"]
    L += ["", f"Whole experiment (initial round + {AL_ROUNDS} AL rounds, 12 trainings at 1,000 … 12,000 "
              f"labels, interpolated linearly in the number of labels, and {AL_ROUNDS} probe/selection "
              f"steps): about {_wc(rt)}, after the one-off extraction "
              f"({_wc(al['extraction_measured'] or al['extraction'].get('resnet18'))} with ResNet-18).", "",
          f"Without freeze-backbone, the FL training alone at 12,000 labels (full ResNet-18 steps at "
          f"B's rate, {FL_ROUNDS} rounds × {LOCAL_EPOCHS} epochs × 12,000 images) would take about "
          f"{_wc(res['full_mode_estimate'])} per AL round, and probing would also run the backbone."]
    notes = list(al["notes"])
    if al["client_selection"] is not None and al["client_selection"]["cpu"] > 5:
        notes.append(f"client selection dominates the frozen round: with pseudo-params = {PSEUDO_PARAMS} the "
                     f"client embeddings have D = {al['pseudo_param_dim']:,} dimensions; a cProfile of "
                     "order_clients on the same input (made while writing this benchmark, not part "
                     "of this run) put ~90% of its time in fedal.knn.pair_distances, for only "
                     "100×100 distances. A faster exact distance for large D, or sketch-dim > 0, "
                     "would remove most of it (owner: fedal.knn).")
    if not al["local_selection_complete"]:
        notes.append("\\* local selection covers predict + entropy only.")
    if notes:
        L += ["", "Notes:", ""] + [f"- {n}" for n in notes]
    L += ["", "## Raw numbers", "", "```json", json.dumps(res, indent=1, default=str), "```", ""]
    return "\n".join(L)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, ~1 minute")
    # One thread by default: on our shared 2-core machines other jobs keep a core busy, and two
    # OpenMP threads then spin-wait on each other (measured: head steps 50x, ResNet steps 3x
    # slower than with one thread). Use --threads 2 on an idle machine.
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1, see comment)")
    ap.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    dev = resolve_device(args.device)
    q = args.quick
    t0 = time.perf_counter()
    res: dict = {"quick": q, "command": "python -m simulations.benchmarks.bench_vision" + (" --quick" if q else ""),
                 "env": {"date": time.strftime("%Y-%m-%d %H:%M"), "device": str(dev), "torch": torch.__version__,
                         "threads": torch.get_num_threads(), "cores": os.cpu_count(),
                         "load_before": _load()}}
    print("A. extraction", flush=True)
    res["extraction"] = [bench_extraction("resnet18", 512 if q else 2048, dev),
                         bench_extraction("resnet50", 256 if q else 1024, dev)]
    print("B. training step", flush=True)
    res["train_step"] = [bench_train_step("resnet18", 3 if q else 10, 50 if q else 500, dev),
                         bench_train_step("resnet50", 2 if q else 5, 50 if q else 500, dev)]
    print("C. AL round", flush=True)
    rates = {r["backbone"]: {"wall": r["images_per_s"], "cpu": r["images_per_cpu_s"]} for r in res["extraction"]}
    labels = [1000, 12000] if q else [1000, 6000, 12000]
    al = bench_al_round(rates, labels, probe_clients=10 if q else 50, real_extraction=not q, dev=dev)
    # Whole run: training interpolated linearly in labels (12 trainings), fixed costs per AL round.
    al["run_total"] = {}
    for kind in ("wall", "cpu"):
        ls = np.array(sorted(al["train"]), dtype=float)
        ts = np.array([al["train"][int(v)][kind] for v in ls])
        slope, icpt = np.polyfit(ls, ts, 1)
        al["run_total"][kind] = float(sum(icpt + slope * 1000 * (r + 1) for r in range(AL_ROUNDS + 1))
                                      + _fixed(al, kind) * AL_ROUNDS)
    res["al_round"] = al
    r18 = res["train_step"][0]
    res["full_mode_estimate"] = {"wall": FL_ROUNDS * LOCAL_EPOCHS * 12000 / r18["full_images_per_s"],
                                 "cpu": FL_ROUNDS * LOCAL_EPOCHS * 12000 / r18["full_images_per_cpu_s"]}
    res["env"]["load_after"] = _load()
    res["wall_s"] = time.perf_counter() - t0
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(res))
    print(f"wrote {out} in {res['wall_s']:.0f} s", flush=True)
    return res


if __name__ == "__main__":
    main()
