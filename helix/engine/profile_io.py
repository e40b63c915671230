"""Writing profiles in Helix's table format.

`<out>/<model_key>/<gpu_key>/prompt_bs2time.csv` (rows `tokens,ms`, one layer, first row `0,0`),
`<out>/<model_key>/<gpu_key>/decode_bs2time.csv` (rows `batch,ms`), and `<out>/profile_tables.json`
= {model_key: {gpu_key: {machine_type, max_layers, kv_blocks_by_layers, prompt_max_requests_by_layers,
decode_max_tokens_by_layers}}}, merged into an existing file.
"""

from __future__ import annotations

import json
from pathlib import Path

from helix.engine.profiler import ProfileResult
from helix.errors import HelixInputError

TABLES_FILE = "profile_tables.json"


def _csv(rows: tuple[tuple[int, float], ...]) -> str:
    return "".join(f"{x},{0 if ms == 0 else round(ms, 4)}\n" for x, ms in rows)


def table_entry(result: ProfileResult) -> dict:
    def keyed(table: dict[int, int]) -> dict[str, int]:
        return {str(k): int(v) for k, v in sorted(table.items())}

    return {
        "machine_type": result.machine_type,
        "max_layers": result.max_layers,
        "kv_blocks_by_layers": keyed(result.kv_blocks_by_layers),
        "prompt_max_requests_by_layers": keyed(result.prompt_max_requests_by_layers),
        "decode_max_tokens_by_layers": keyed(result.decode_max_tokens_by_layers),
    }


def write_profile(out_dir: Path, model_key: str, gpu_key: str, result: ProfileResult) -> list[Path]:
    """Write the two CSVs and merge the tables into `<out_dir>/profile_tables.json`."""
    table_dir = out_dir / model_key / gpu_key
    table_dir.mkdir(parents=True, exist_ok=True)
    prompt_path, decode_path = table_dir / "prompt_bs2time.csv", table_dir / "decode_bs2time.csv"
    prompt_path.write_text(_csv(result.prompt_ms))
    decode_path.write_text(_csv(result.decode_ms))
    tables_path = out_dir / TABLES_FILE
    tables: dict = {}
    if tables_path.is_file():
        try:
            tables = json.loads(tables_path.read_text())
        except json.JSONDecodeError as exc:
            raise HelixInputError(
                f"not valid JSON: {exc}", where=str(tables_path), fix="fix or remove the file"
            ) from exc
        if not isinstance(tables, dict):
            raise HelixInputError("expected a JSON object", where=str(tables_path))
    tables.setdefault(model_key, {})[gpu_key] = table_entry(result)
    tables_path.write_text(json.dumps(tables, indent=1) + "\n")
    return [prompt_path, decode_path, tables_path]
