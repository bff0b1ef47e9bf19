"""The results row (`decay.row`): a real row holds exactly the keys of its tier, and the docs list every key."""

from __future__ import annotations

import os
import re

import pytest

from decay import row
from decay.families import FAMILIES
from decay.loop import train_run
from tests.conftest import ROOT, tiny_config

# basic and standard on every feed-forward family; basic on the lstm (the recurrent family with every part: its
# rnn and gru siblings build the row the same way, and the tiers add the same keys); full on mlp.
NAMES = [n for n in FAMILIES.names() if not FAMILIES.get(n).sequence]
CASES = [(tier, name) for tier in ("basic", "standard") for name in NAMES] + [("basic", "lstm"), ("full", "mlp")]


@pytest.mark.parametrize("tier, name", CASES)
def test_row_keys_are_exactly_those_of_its_tier(tier, name, tiny_data, tiny_adding, request):
    fam = FAMILIES.get(name)
    if (tier, name) == ("full", "mlp"):
        r = request.getfixturevalue("full_row")  # shared with test_instruments
    else:
        depth = next(d for d in (2, 1) if fam.depths_rule((d,)) is None)
        dataset = tiny_adding if fam.sequence else tiny_data
        extra = {"dataset": "adding", "norm": "none"} if fam.sequence else {}
        r = train_run(tiny_config(model=name, depth=depth, instruments=tier, steps=1, **extra), dataset)
    assert r["model"] == name and r["instruments"] == tier
    assert tuple(r) == row.keys_for(tier, with_per_sample=fam.per_sample)


def test_keys_for_grows_with_the_tier_and_drops_only_per_sample_keys():
    basic, standard, full = (set(row.keys_for(t)) for t in ("basic", "standard", "full"))
    assert basic < standard < full and full == set(row.NAMES)
    dense_free = set(row.keys_for("full", with_per_sample=False))
    assert full - dense_free == {
        f"{k}_{s}" for k in ("per_sample_grad_norm", "grad_snr", "b_simple_layers", "b_simple") for s in ("init", "final")
    }
    assert len(row.NAMES) == len(set(row.NAMES))


def _results_row_table() -> list[list[str]]:
    """Cells of the table under `## The results row` in docs/reference.md (header and separator dropped)."""
    with open(os.path.join(ROOT, "docs", "reference.md")) as f:
        lines = f.read().splitlines()
    assert "## The results row" in lines, "docs/reference.md has no '## The results row' section"
    start = lines.index("## The results row") + 1
    section = []
    for line in lines[start:]:
        if line.startswith("## "):
            break
        section.append(line)
    table = [line.strip() for line in section if line.strip().startswith("|")]
    assert table, "no table under '## The results row'"
    # Cells split on unescaped pipes; `\|` inside a cell (e.g. "float \| null") is a literal pipe.
    rows = [[c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)[1:-1]] for line in table]
    assert [c.lower() for c in rows[0]] == ["key", "type", "tier", "meaning"], rows[0]
    assert all(set(c) <= set("-: ") for c in rows[1]), rows[1]
    return rows[2:]


def test_reference_lists_every_row_field_with_its_type_and_tier():
    cells = _results_row_table()
    assert all(len(c) == 4 for c in cells), [c for c in cells if len(c) != 4]
    assert all(re.fullmatch(r"`\w+`", c[0]) for c in cells), [c[0] for c in cells if not re.fullmatch(r"`\w+`", c[0])]
    keys = tuple(c[0].strip("`") for c in cells)
    assert keys == row.NAMES, f"missing: {sorted(set(row.NAMES) - set(keys))}, extra: {sorted(set(keys) - set(row.NAMES))}"
    documented = {c[0].strip("`"): (c[1], c[2]) for c in cells}
    for f in row.FIELDS:
        assert documented[f.name] == (f.kind, f.tier), f.name
