"""Load a cluster from any supported file: YAML (ours) or INI (Helix's)."""

from __future__ import annotations

from pathlib import Path

from helix.errors import HelixInputError
from helix.reference import BUNDLED_REFERENCE_DIR
from helix.specs.cluster import ClusterSpec
from helix.specs.cluster_yaml import load_cluster_yaml
from helix.specs.helix_ini import load_helix_ini

BUNDLED_CLUSTERS_DIR = Path(__file__).resolve().parent.parent / "data" / "clusters"
# Helix's own cluster files, bundled with its reference data (see helix.reference).
HELIX_CLUSTERS_DIR = BUNDLED_REFERENCE_DIR / "clusters"


def bundled_clusters() -> dict[str, Path]:
    """Bundled cluster name → file: ours (``demo``, ``geo-mixed``) and Helix's (``single24``, ...)."""
    found = {p.stem: p for p in sorted(HELIX_CLUSTERS_DIR.glob("*.ini")) if p.stem != "machine_profiles"}
    found |= {p.stem: p for p in sorted(BUNDLED_CLUSTERS_DIR.glob("*.yaml"))}
    return found


def load_cluster(path: str | Path, *, helix_units: bool = True) -> ClusterSpec:
    """A cluster from ``.yaml``/``.yml`` or a Helix ``.ini`` file, or a bundled name such as ``demo``."""
    path = Path(path)
    bundled = bundled_clusters()
    if not path.exists() and str(path) in bundled:
        path = bundled[str(path)]
    if not path.exists():
        raise HelixInputError(
            "no such file, and not a bundled cluster name",
            where=str(path),
            field="--cluster",
            fix=f"give a cluster .yaml or Helix .ini path, or a bundled name: {', '.join(bundled)}",
        )
    if path.is_dir():
        raise HelixInputError(
            "is a directory", where=str(path), field="--cluster", fix="give a cluster .yaml or .ini file"
        )
    if path.suffix in (".yaml", ".yml"):
        return load_cluster_yaml(path)
    if path.suffix == ".ini":
        return load_helix_ini(path, helix_units=helix_units)
    raise HelixInputError(
        f"unsupported file type {path.suffix!r}",
        where=str(path),
        fix="use a .yaml cluster file or a Helix .ini cluster file",
    )
