"""What a rehearsal (``fedal rehearse``, fedal/deploy/local.py) runs on: its run config and
its sites' data files, checked against each other before any process starts."""

from __future__ import annotations

from pathlib import Path


class DeploymentError(RuntimeError):
    """A step of the local deployment failed; the message names the step and its log file."""


# the run config of a rehearsal before --run-config: small sites can serve it, and with
# init-clients = clients-per-round = the number of sites every site gets budget ("{sites}")
REHEARSAL = {"min-clients": "{sites}", "init-clients": "{sites}", "clients-per-round": "{sites}", "init-points": 10,
             "points-per-client": 10, "al-rounds": 2, "fl-rounds": 1, "local-epochs": 1}


def rehearsal_config(n_sites: int, overrides: dict) -> dict:
    return {**{k: n_sites if v == "{sites}" else v for k, v in REHEARSAL.items()}, **overrides}


def site_points(dataset: str, n_sites: int, points: int) -> int:
    """Points per site of ``write_sites``: ``points``, or an equal part of the training split."""
    from fedal.data import load_dataset

    return points or len(load_dataset(dataset).y_train) // n_sites


def check_fits_sites(rc: dict, points: int) -> None:
    """Refuses a run config that asks a site for more labels than it has points: a site chosen in
    every round pays init-points + al-rounds x points-per-client."""
    from fedal.config import Config

    cfg = Config.from_run_config(rc)
    demand = cfg.init_points + cfg.al_rounds * cfg.points_per_client
    if demand > points:
        raise DeploymentError(
            f"a site of {points} points cannot serve init-points = {cfg.init_points} + al-rounds = {cfg.al_rounds} x "
            f"points-per-client = {cfg.points_per_client} = {demand} labels; lower them in --run-config or raise "
            "--points-per-site")


def write_sites(out: Path, n_sites: int, dataset: str = "digits", points: int = 0, seed: int = 0,
                labels: bool = True) -> list[Path]:
    """``out/site-<k>/data.npz`` for k = 1..n: part k of n of the data set's training split
    (``fedal site export``, IID; ``points`` each, 0 = the whole part), ``x`` as the data set gives
    it and ``y`` as the oracle's answers unless ``labels`` is False."""
    from fedal.data.export import ExportError, export_site

    try:
        return [export_site(dataset, out / f"site-{k}" / "data.npz", k, n_sites, points=points, seed=seed,
                            labels=labels, force=True).path for k in range(1, n_sites + 1)]
    except ExportError as e:
        raise DeploymentError(f"{n_sites} sites of {points} points: {e}") from None
