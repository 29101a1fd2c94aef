"""One validated configuration for a fedal run.

The single source of truth for keys and defaults is ``DEFAULTS`` (``fedal.defaults``); ``pyproject.toml``'s
``[tool.flwr.app.config]`` repeats them for ``flwr run`` (a test keeps the two identical) because
the deprecated ``run_simulation`` entry point passes an empty run config, so defaults must live in
code too. ``Config.from_run_config`` parses the kebab-case run config once, validates every value
before any expensive work, and raises ``ConfigError`` naming the key, the bad value and the valid
choices.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, fields
from typing import Any, Mapping

from fedal.data.registry import dataset_names, resolve_backbone
from fedal.defaults import DEFAULTS
from fedal.errors import ConfigError  # defined below fedal.data, which raises it too
from fedal.numerics import NUMERICS
from fedal.validation import check_choice, check_number, invalid

# Choices are tuples so that error messages can list them.
PARTITIONS = ("dirichlet", "dirichlet-equal", "shard", "iid")
LR_SCHEDULES = ("constant", "step")
PSEUDO_PARAMS = ("head", "all")
LOCAL_SPACES = ("embedding", "input")
DEVICES = ("auto", "cpu", "cuda")
BACKBONES = ("auto", "cnn1d", "mlp", "resnet18", "resnet50", "resnet101")

# keys that name or place a run but do not change what it computes
NON_EXPERIMENT_KEYS = ("seed", "run-dir", "run-name", "method-name", "suite", "min-clients",
                       "wait-timeout", "send-timeout", "max-retries", "retry-backoff",
                       "on-client-failure", "resume", "stop-after-round", "experiment-id")
ON_CLIENT_FAILURE = ("skip", "stop")
LABELING = ("sync", "async")
# keys read only by labeling = "async": a sync run's experiment hash leaves them (and "labeling"
# itself) out, so every sync run keeps the hash it had before they existed
ASYNC_KEYS = ("labeling", "async-workers", "query-pool-low", "query-pool-refill", "annotators-per-site",
              "annotator-latency", "label-noise", "sim-fl-round-s", "sim-select-s", "annotators",
              "labeling-deadline-s", "async-budget")
ASYNC_BUDGETS = ("selection", "standing")
ANNOTATORS = ("simulated", "people")
# async keys added after async runs had been recorded: left out of an async run's hash while they
# hold their default (which is what those runs did), so every recorded run keeps its hash
LATER_ASYNC_KEYS = ("annotators", "labeling-deadline-s", "async-budget")
# training keys added after runs had been recorded: out of the hash while the schedule is the
# constant one every recorded run used (lr-step-rounds is read only by the step schedule)
LR_KEYS = ("lr-schedule", "lr-step-rounds")
# client-rule keys added after runs that read them had been recorded: out of the hash at their
# defaults, which those runs used (the mean softmax; a labeled client covering wholly; no gate)
LATER_RULE_KEYS = ("predicted-mix", "cumulative-cover", "mix-gate")
# added after every recorded run had computed on its machine's own kernels: out of the hash at
# "native", so those runs keep their hashes; "portable" is another experiment (fedal/numerics.py)
LATER_ENV_KEYS = ("numerics",)



def _registries():
    """The three registries a run chooses from: client strategies, point strategies, training
    modes. Imported on use: the point and client strategies pull numpy only, but the training
    modes live with their losses (torch), and reading a config should not need torch."""
    from fedal import acquisition
    from fedal.continual import MODES
    from fedal import selection

    return selection, acquisition, MODES


def __getattr__(name: str):
    # the choices tuples, from the registries (module attributes on first use, see _registries)
    if name == "CLIENT_STRATEGIES":
        return _registries()[0].available()
    if name == "POINT_STRATEGIES":
        return tuple(_registries()[1].available())
    if name == "TRAINING_MODES":
        return tuple(_registries()[2])
    if name == "DATASETS":
        return dataset_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _declared_keys(run_config: Mapping[str, Any] | None) -> set[str]:
    """Run-config keys declared by the strategies and mode a run uses (``run_config`` None: by
    every registered one). An unknown name declares nothing."""
    clients, points, modes = _registries()
    if run_config is None:
        chosen = (clients.available(), points.available(), tuple(modes))
    else:
        chosen = ((run_config.get("client-strategy"),), (run_config.get("point-strategy"),),
                  (run_config.get("training-mode"),))
    keys: set[str] = set()
    for name in chosen[0]:
        if name in clients.available():
            keys.update(clients.get(name).config_keys)
    for name in chosen[1]:
        if name in points.available():
            keys.update(points.strategy_class(name).config_keys)
    for name in chosen[2]:
        if name in modes:
            keys.update(modes[name].config_keys)
    return keys


def experiment_key(run_config: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a (complete, kebab-case) run config that decides what the run computes.

    Keys that some strategy or mode declares it reads, but none of this run's do, are left out:
    the run computes the same whatever they hold (and a finished Rand run stays the same
    experiment after a new probe key appears).

    Recorded runs keep their hashes (tests/test_recorded_hashes.py), which is why one key stays
    that a run does not read: an asynchronous run's query workers rank by ``async-workers``, not
    by ``point-strategy`` (nor the keys its point strategy declares), yet these stay in its hash,
    as asynchronous runs were recorded with them."""
    drop = set(NON_EXPERIMENT_KEYS) | (_declared_keys(None) - _declared_keys(run_config))
    if run_config.get("labeling", "sync") == "sync":
        drop |= set(ASYNC_KEYS)
    drop |= {k for k in LATER_ASYNC_KEYS + LATER_RULE_KEYS + LATER_ENV_KEYS if k in run_config and run_config[k] == DEFAULTS[k]}
    if run_config.get("lr-schedule", DEFAULTS["lr-schedule"]) == DEFAULTS["lr-schedule"]:
        drop |= set(LR_KEYS)
    return {k: v for k, v in run_config.items() if k not in drop}


def experiment_hash(run_config: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(experiment_key(run_config), sort_keys=True).encode()).hexdigest()[:12]


def _kebab(name: str) -> str:
    return name.replace("_", "-")


@dataclass(frozen=True)
class Config:
    seed: int
    dataset: str
    data_root: str
    partition: str
    dirichlet_alpha: float
    shard_class_fraction: float
    init_clients: int
    init_points: int
    al_rounds: int
    clients_per_round: int
    points_per_client: int
    client_strategy: str
    point_strategy: str
    training_mode: str
    fl_rounds: int
    local_epochs: int
    batch_size: int
    learning_rate: float
    lr_schedule: str
    lr_step_rounds: int
    pseudo_optimizer: str
    pseudo_epochs: int
    pseudo_lr: float
    pseudo_params: str
    sketch_dim: int
    knn_k: int
    rho: float
    delta: float
    diffusion_steps: int
    sigma_scope: str
    laplacian: str
    client_impact: bool
    coverage_steps: int
    pow_d_candidates: int
    predicted_mix: str
    cumulative_cover: str
    mix_gate: str
    local_k: int
    local_space: str
    backbone: str
    backbone_weights: str
    freeze_backbone: bool
    device: str
    numerics: str
    run_dir: str
    run_name: str
    report_label_histogram: bool
    method_name: str
    suite: str
    min_clients: int
    wait_timeout: float
    send_timeout: float
    max_retries: int
    retry_backoff: float
    on_client_failure: str
    resume: bool
    stop_after_round: int
    experiment_id: str
    labeling: str
    async_workers: str
    query_pool_low: int
    query_pool_refill: int
    annotators_per_site: int
    annotator_latency: str
    label_noise: float
    sim_fl_round_s: float
    sim_select_s: float
    annotators: str
    labeling_deadline_s: float
    async_budget: str

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any] | None = None, **overrides: Any) -> "Config":
        """Build from Flower's run config (kebab-case); missing keys take ``DEFAULTS``.

        Unknown keys are rejected (a typo must not silently run the default experiment).
        ``overrides`` use snake_case field names, for tests and scripts.
        """
        rc = dict(run_config or {})
        unknown = sorted(set(rc) - set(DEFAULTS))
        if unknown:
            raise ConfigError(
                f"unknown run-config key(s) {unknown}; valid keys: {', '.join(DEFAULTS)}"
            )
        values = {**DEFAULTS, **rc}
        kwargs = {}
        for f in fields(cls):
            key = _kebab(f.name)
            kwargs[f.name] = _coerce(key, values[key], DEFAULTS[key])
        for name, v in overrides.items():
            key = _kebab(name)
            if key not in DEFAULTS:
                raise ConfigError(f"unknown config field {name!r}; valid keys: {', '.join(DEFAULTS)}")
            kwargs[name] = _coerce(key, v, DEFAULTS[key])
        cfg = cls(**kwargs)
        cfg.validate()
        return cfg

    def to_run_config(self) -> dict[str, Any]:
        return {_kebab(f.name): getattr(self, f.name) for f in fields(self)}

    def replace(self, **changes: Any) -> "Config":
        cfg = dataclasses.replace(self, **changes)
        cfg.validate()
        return cfg

    def config_hash(self) -> str:
        """Hash of everything that defines the experiment except the seed, the output location
        and the keys its strategies never read (``experiment_key``)."""
        return experiment_hash(self.to_run_config())

    @property
    def experiment(self) -> str:
        """The experiment a site's paid labels belong to: ``experiment-id``, else the config hash
        and seed (a new hash or seed is a new experiment with its own pools)."""
        return self.experiment_id or f"{self.config_hash()}-s{self.seed}"

    @property
    def label_budget(self) -> int:
        """Labels after the whole protocol, when data does not run out (docs/method.md, "Protocol")."""
        return self.init_clients * self.init_points + self.al_rounds * self.clients_per_round * self.points_per_client

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        clients, points, modes = _registries()
        from fedal.data.site import CLIENT_ID_PATTERN
        # the choices of the maths that reads them (their modules check them too)
        from fedal.graph import LAPLACIANS, SIGMA_SCOPES
        from fedal.training import PSEUDO_OPTIMIZERS
        from fedal.selection.rules import CUMULATIVE_COVERS, MIX_GATES
        from fedal.uncertainty import PREDICTED_MIXES

        if self.experiment_id and not CLIENT_ID_PATTERN.match(self.experiment_id):
            # it names the sites' store folders and the run's directory
            raise ConfigError(f"experiment-id = {self.experiment_id!r} is not valid: use 1-64 letters, digits, "
                              "'.', '_' or '-', starting with a letter or digit")
        _choice("dataset", self.dataset, dataset_names())
        _choice("partition", self.partition, PARTITIONS)
        _choice("client-strategy", self.client_strategy, clients.available())
        _choice("point-strategy", self.point_strategy, tuple(points.available()))
        _choice("training-mode", self.training_mode, tuple(modes))
        _choice("pseudo-params", self.pseudo_params, PSEUDO_PARAMS)
        _choice("pseudo-optimizer", self.pseudo_optimizer, PSEUDO_OPTIMIZERS)
        _choice("predicted-mix", self.predicted_mix, PREDICTED_MIXES)
        _choice("cumulative-cover", self.cumulative_cover, CUMULATIVE_COVERS)
        _choice("mix-gate", self.mix_gate, MIX_GATES)
        _choice("sigma-scope", self.sigma_scope, SIGMA_SCOPES)
        _choice("laplacian", self.laplacian, LAPLACIANS)
        _choice("local-space", self.local_space, LOCAL_SPACES)
        _choice("device", self.device, DEVICES)
        _choice("numerics", self.numerics, NUMERICS)
        if self.numerics == "portable" and self.device == "cuda":
            raise ConfigError("numerics = portable fixes CPU kernels, but device = cuda trains on the GPU: set "
                              "device = cpu (or auto on a machine without CUDA), or numerics = native")
        _choice("backbone", self.backbone, BACKBONES)
        _number("dirichlet-alpha", self.dirichlet_alpha, 0, lo_open=True)
        _number("shard-class-fraction", self.shard_class_fraction, 0, 1, lo_open=True)
        for key in ("init-clients", "init-points", "clients-per-round", "points-per-client",
                    "fl-rounds", "local-epochs", "batch-size", "pseudo-epochs", "knn-k",
                    "diffusion-steps", "local-k"):
            _number(key, getattr(self, key.replace("-", "_")), 1, integer=True)
        _number("al-rounds", self.al_rounds, 0, integer=True)
        _number("sketch-dim", self.sketch_dim, 0, integer=True, note="0: off")
        _number("learning-rate", self.learning_rate, 0, lo_open=True)
        _choice("lr-schedule", self.lr_schedule, LR_SCHEDULES)
        _number("lr-step-rounds", self.lr_step_rounds, 1, integer=True, note="FL rounds between two decays")
        self._validate_client_rules()
        _number("pseudo-lr", self.pseudo_lr, 0, lo_open=True)
        _number("min-clients", self.min_clients, 1, integer=True)
        for key in ("wait-timeout", "send-timeout"):
            _number(key, getattr(self, key.replace("-", "_")), 0, lo_open=True, note="seconds")
        _number("max-retries", self.max_retries, 0, integer=True)
        _number("retry-backoff", self.retry_backoff, 0, note="seconds")
        _choice("on-client-failure", self.on_client_failure, ON_CLIENT_FAILURE)
        _number("stop-after-round", self.stop_after_round, -1, integer=True, note="-1: off")
        if clients.get(self.client_strategy).needs_label_histogram and not self.report_label_histogram:
            others = [n for n in clients.available()  # the simulator-only yardstick is no alternative
                      if not (clients.get(n).needs_label_histogram or clients.get(n).simulator_only)]
            raise ConfigError(
                f"client-strategy = {self.client_strategy!r} steers by the labeled set's class counts, which "
                "clients report only with report-label-histogram = true; set it to true or choose "
                f"another client-strategy ({', '.join(others)})")
        _number("rho", self.rho, 0, note="0 disables anisotropy")
        self._validate_labeling()
        _number("delta", self.delta, 0, 1, lo_open=True, hi_open=True)
        if self.freeze_backbone:
            resolved = resolve_backbone(self.dataset, self.backbone)
            if resolved == "cnn1d" and not self.backbone_weights:
                raise ConfigError(
                    "freeze-backbone = true with the cnn1d backbone needs backbone-weights = <path of a "
                    "pretrained CNN1D state dict> (python -m simulations.pretrain writes one); a frozen "
                    "randomly initialised cnn1d would never learn features")
            if resolved not in ("resnet18", "resnet50", "resnet101", "cnn1d"):
                raise ConfigError(
                    f"freeze-backbone = true needs a pretrained backbone; backbone = {self.backbone!r} "
                    f"(dataset {self.dataset!r}); valid: resnet18, resnet50, resnet101 (or auto on an "
                    "image dataset), or cnn1d (auto on mnist1d) with backbone-weights")

    def _validate_client_rules(self) -> None:
        if self.coverage_steps < 2 or self.coverage_steps % 2:
            raise invalid("coverage-steps", self.coverage_steps, "an even integer >= 2 (diffusion-coverage's "
                          "kernel is a cosine of heat profiles P^(H/2) e_z)", ConfigError)
        if self.client_strategy == "diffusion-coverage" and self.laplacian == "rw":
            raise ConfigError("client-strategy = 'diffusion-coverage' needs a symmetric diffusion operator: "
                              "laplacian = 'rw' is not valid with it; valid: unnormalized, sym")
        _number("pow-d-candidates", self.pow_d_candidates, 0, integer=True, note="0: 2 × clients-per-round")
        if 0 < self.pow_d_candidates < self.clients_per_round:
            raise invalid("pow-d-candidates", self.pow_d_candidates,
                          f"0 (2 × clients-per-round) or at least clients-per-round = {self.clients_per_round}",
                          ConfigError)

    @property
    def worker_measures(self) -> tuple[str, ...]:
        """The uncertainty measure of each of a site's query workers (``async-workers``)."""
        return tuple(m.strip() for m in self.async_workers.split(",") if m.strip())

    def _validate_labeling(self) -> None:
        _choice("labeling", self.labeling, LABELING)
        measures, valid = self.worker_measures, _registries()[1].uncertainty_measures()
        if not measures or any(m not in valid for m in measures):  # point strategies that rank by a score
            raise invalid("async-workers", self.async_workers,
                          f"a comma-separated list of {', '.join(valid)}", ConfigError)
        _number("query-pool-low", self.query_pool_low, 0, integer=True)
        _number("query-pool-refill", self.query_pool_refill, 1, integer=True)
        if self.query_pool_refill < self.query_pool_low:
            raise invalid("query-pool-refill", self.query_pool_refill,
                          f"at least query-pool-low = {self.query_pool_low}", ConfigError)
        _number("annotators-per-site", self.annotators_per_site, 1, integer=True)
        _number("label-noise", self.label_noise, 0, 1)
        _number("sim-fl-round-s", self.sim_fl_round_s, 0, lo_open=True, note="simulated seconds")
        _number("sim-select-s", self.sim_select_s, 0, note="simulated seconds")
        _choice("annotators", self.annotators, ANNOTATORS)
        _choice("async-budget", self.async_budget, ASYNC_BUDGETS)
        if self.labeling == "async" and self.annotators == "simulated" and self.stop_after_round >= 0:
            # stopping is for a run that resumes; these sites' annotators live in memory
            raise ConfigError(
                f"stop-after-round = {self.stop_after_round} needs a run that can resume; an asynchronous run "
                "with simulated annotators cannot (their query pools live in the clients' memory): set "
                "stop-after-round = -1, or annotators = 'people'")
        if self.annotators == "people" and self.labeling != "async":
            raise ConfigError(
                f"annotators = 'people' needs labeling = 'async' (labeling = {self.labeling!r}): people label "
                "each site's query pool on its labeling page while the server trains; the synchronous loop "
                "asks each client's oracle (its data's labels) instead; set labeling = \"async\"")
        _number("labeling-deadline-s", self.labeling_deadline_s, 0, note="seconds on the run's clock; 0: none")
        if self.annotators == "people" and self.labeling_deadline_s <= 0:
            # no default fits people (minutes in a demo, days at a clinic), and a count of tail
            # rounds (the guard of simulated runs) says nothing about wall time
            raise ConfigError(
                "annotators = 'people' needs labeling-deadline-s > 0: how many seconds after the last AL "
                "round's grants the run waits for people's labels before it withdraws the open queries "
                "and ends (e.g. labeling-deadline-s = 86400 for a day)")
        try:
            from fedal.annotate.annotators import Latency

            Latency.parse(self.annotator_latency)
        except ValueError as e:
            raise invalid("annotator-latency", self.annotator_latency,
                          f"kind:key=value,... e.g. lognormal:median=6,sigma=0.5 ({e})", ConfigError) from None

    def check_against_clients(self, sizes: Mapping[int, tuple[int, int]]) -> None:
        """Checks that need the federation: ``sizes`` maps partition id -> (|L|, |U|).

        Run before round 0 so that an impossible protocol stops before any label is paid for.
        """
        m = len(sizes)
        if m == 0:
            raise ConfigError("the federation has no clients; start at least one SuperNode")
        _number("init-clients", self.init_clients, 1, m, integer=True, note=f"at most the {m} clients")
        _number("clients-per-round", self.clients_per_round, 1, m, integer=True, note=f"at most the {m} clients")
        largest = max(u for _, u in sizes.values())
        for key in ("points-per-client", "init-points"):
            _number(key, getattr(self, key.replace("-", "_")), 1, largest, integer=True,
                    note=f"at most the largest client's unlabeled pool, {largest}")


def _coerce(key: str, value: Any, default: Any) -> Any:
    """Flower run-config values arrive as str/int/float/bool; coerce to the default's type."""
    t = type(default)
    try:
        if t is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
                return value.lower() in ("true", "1", "yes")
            if isinstance(value, int) and value in (0, 1):
                return bool(value)
            raise ValueError
        if t is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if t is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise invalid(key, value, {"int": "an integer", "float": "a number", "bool": "true or false"}.get(t.__name__, "a string"), ConfigError) from None


def _choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    check_choice(value, key, choices, error=ConfigError)


def _number(key: str, value, lo=None, hi=None, **kw) -> None:
    check_number(value, key, lo, hi, error=ConfigError, **kw)
