"""Load a cluster from any supported file: YAML (ours) or INI (Helix's)."""

from __future__ import annotations

from pathlib import Path

from helix.errors import HelixInputError
from helix.specs.cluster import ClusterSpec
from helix.specs.cluster_yaml import load_cluster_yaml
from helix.specs.helix_ini import load_helix_ini

BUNDLED_CLUSTERS_DIR = Path(__file__).resolve().parent.parent / "data" / "clusters"


def load_cluster(path: str | Path, *, helix_units: bool = True) -> ClusterSpec:
    """A cluster from ``.yaml``/``.yml`` or a Helix ``.ini`` file, or a bundled name such as ``demo``."""
    path = Path(path)
    if not path.exists() and (BUNDLED_CLUSTERS_DIR / f"{path}.yaml").exists():
        path = BUNDLED_CLUSTERS_DIR / f"{path}.yaml"
    if not path.exists():
        bundled = sorted(p.stem for p in BUNDLED_CLUSTERS_DIR.glob("*.yaml"))
        raise HelixInputError(
            "file not found",
            where=str(path),
            fix=f"give a cluster .yaml or Helix .ini path, or a bundled name: {bundled}",
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
