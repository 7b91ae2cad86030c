"""Agreement of the report labelers with independent reference labels; writes a Markdown table.

Chest: label_chest_report on IU X-ray findings + impression vs the NLM indexers' MeSH terms mapped
to CheXpert classes (trainer/data/mesh_labels.py); per class precision, recall, F1, support and
Cohen's kappa. Fundus: label_fundus_keywords per eye vs the Kaggle file name's class letter(s).

    python benchmarks/labeler_agreement.py [--data ../shared/data] [--out benchmarks/results/...]
    python benchmarks/labeler_agreement.py --errors "Lung Lesion"   # print disagreements to refine rules
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from sklearn.metrics import cohen_kappa_score, precision_recall_fscore_support

from trainer.data.labels import (
    CHEXPERT_CLASSES,
    ODIR_CLASSES,
    label_chest_report,
    label_fundus_keywords,
    labels_from_report,
)
from trainer.data.mesh_labels import mesh_to_chexpert

ROOT = Path(__file__).resolve().parents[1]
NO_FINDING_ANY = "No Finding (no mapped class)"


@dataclass
class ChestCase:
    uid: str
    text: str
    reference: set[str]


def chest_text(row: dict) -> str:
    """The labelled text: findings + impression (indication and comparison are history)."""
    return " ".join(part.strip() for part in (row.get("findings") or "", row.get("impression") or "")).strip()


def load_chest_cases(path: Path) -> tuple[list[ChestCase], Counter]:
    """Reports with text and MeSH indexing; `skipped` counts the others by reason."""
    cases, skipped = [], Counter()
    for line in path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        reference, text = mesh_to_chexpert(row.get("mesh_major") or []), chest_text(row)
        if reference is None:
            skipped["not indexed (No Indexing)"] += 1
        elif not text:
            skipped["no findings or impression"] += 1
        else:
            cases.append(ChestCase(row["uid"], text, reference))
    return cases, skipped


def class_metrics(truth: list[bool], predicted: list[bool]) -> dict[str, float]:
    precision, recall, f1, _ = precision_recall_fscore_support(
        truth, predicted, average="binary", zero_division=0.0
    )
    kappa = cohen_kappa_score(truth, predicted) if len(set(truth) | set(predicted)) > 1 else 1.0
    return {"support": sum(truth), "predicted": sum(predicted), "precision": precision, "recall": recall,
            "f1": f1, "kappa": kappa}


def chest_agreement(cases: list[ChestCase], uncertain: str = "positive") -> dict[str, dict[str, float]]:
    """Per-class metrics; also No Finding against "MeSH maps to no CheXpert pathology"."""
    predicted = [set(labels_from_report(c.text, "chest", uncertain=uncertain)) for c in cases]
    results = {}
    for name in CHEXPERT_CLASSES:
        results[name] = class_metrics([name in c.reference for c in cases], [name in p for p in predicted])
    no_pathology = [not (c.reference - {"No Finding", "Support Devices"}) for c in cases]
    results[NO_FINDING_ANY] = class_metrics(no_pathology, ["No Finding" in p for p in predicted])
    return results


def load_fundus(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def fundus_agreement(rows: list[dict]) -> dict[str, object]:
    """Per-eye keyword codes vs the file's class letters (patient-level naming, one or two letters)."""
    exact = contains = 0
    per_class = {}
    truths = [set(r["file_label"]) for r in rows]
    preds = [set(label_fundus_keywords(r["report"])) for r in rows]
    for truth, pred in zip(truths, preds, strict=True):
        exact += truth == pred
        contains += truth <= pred
    for code in ODIR_CLASSES:
        per_class[code] = class_metrics([code in t for t in truths], [code in p for p in preds])
    return {"eyes": len(rows), "exact": exact, "contains": contains, "per_class": per_class,
            "no_code": sum(not p for p in preds)}


def print_errors(cases: list[ChestCase], name: str, uncertain: str, limit: int = 40) -> None:
    """Disagreements for one class, with the labeler's full output, to refine rules by reading."""
    shown = 0
    for case in cases:
        predicted = name in labels_from_report(case.text, "chest", uncertain=uncertain)
        if predicted != (name in case.reference) and shown < limit:
            kind = "FP" if predicted else "FN"
            print(f"[{kind}] {case.uid} {sorted(case.reference)} {label_chest_report(case.text)}\n  {case.text}\n")
            shown += 1


def _machine() -> tuple[str, str]:
    """`uname -a` and lscpu's model name, as the results file reports them."""
    def run(*cmd: str) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, check=False).stdout.strip()
        except OSError:
            return ""

    uname = run("uname", "-a") or " ".join(platform.uname())
    model = [ln.split(":", 1)[1].strip() for ln in run("lscpu").splitlines() if ln.startswith("Model name")]
    return uname, (model[0] if model else platform.processor() or "?")


def _row(name: str, m: dict[str, float], extra: str = "") -> str:
    return (f"| {name} | {m['support']} | {m['predicted']} | {m['precision']:.2f} | {m['recall']:.2f} | "
            f"{m['f1']:.2f} | {m['kappa']:.2f} |{extra}")


def speed(cases: list[ChestCase]) -> dict[str, float]:
    """Seconds per report over the corpus, and for one 10,000-word report made of its text (best of 3)."""
    started = time.perf_counter()
    for case in cases:
        label_chest_report(case.text)
    per_report = (time.perf_counter() - started) / len(cases)
    long = " ".join(" ".join(c.text for c in cases).split()[:10_000])
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        label_chest_report(long)
        best = min(best, time.perf_counter() - started)
    return {"per_report": per_report, "ten_k_words": best}


def _chest_lines(chest: dict, negative: dict, skipped: Counter, n_cases: int) -> list[str]:
    frequent = [n for n in CHEXPERT_CLASSES if chest[n]["support"] >= 20]
    macro = {k: sum(r[n]["f1"] for n in frequent) / len(frequent) for k, r in (("U→1", chest), ("U→0", negative))}
    lines = [
        f"## Chest: labeler vs MeSH (IU X-ray, {n_cases} indexed reports with text)", "",
        (
            "Reference: the NLM indexers' MeSH terms mapped to CheXpert classes (trainer/data/mesh_labels.py); "
            "labeler input: findings + impression. Support = reports with the class in MeSH; Labelled = "
            "reports the labeler marks positive, uncertain mentions counted positive (U→1); the last column "
            "is F1 with uncertain mentions counted negative (U→0). Left out: "
            f"{', '.join(f'{v} {k}' for k, v in sorted(skipped.items())) or 'none'}."
        ),
        "",
        "| Class | Support | Labelled | Precision | Recall | F1 | κ | F1 U→0 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in (*CHEXPERT_CLASSES, NO_FINDING_ANY):
        lines.append(_row(name, chest[name], f" {negative[name]['f1']:.2f} |"))
    lines += [
        "",
        (
            f"Macro F1 over the {len(frequent)} classes with support ≥ 20: "
            + ", ".join(f"{k} {v:.3f}" for k, v in macro.items()) + ". "
            f"'{NO_FINDING_ANY}' compares No Finding with reports whose MeSH terms map to no CheXpert "
            "pathology; MeSH 'normal' is stricter (degenerative spine, calcinosis, ... are not 'normal'). "
            "Most Pneumonia and Edema false positives are hedged mentions ('may represent infection', "
            "'differential includes edema') that the labeler marks uncertain and the indexers left out. "
            "Caveat: the phrase lists were refined by reading disagreements on these same reports (general "
            "rules, no per-report fixes), so expect somewhat lower numbers on unseen reports, e.g. the "
            "held-out half of IU X-ray."
        ),
    ]
    return lines


def _fundus_lines(fundus: dict) -> list[str]:
    eyes = fundus["eyes"]
    lines = [
        f"## Fundus: keywords vs file label (ODIR-5K, {eyes} eyes)", "",
        (
            "Per-eye codes from the graders' keywords (trainer/data/odir_terms.py) vs the Kaggle file "
            "name's class letter(s) (\"DH\" = D and H), which name one main class per eye: extra codes "
            "from secondary keywords (mostly O: laser spot, epiretinal membrane, drusen next to DR) count as "
            "false positives here, and every D the keywords miss is an eye graded 'hypertensive "
            "retinopathy' with no diabetic keyword in a file named DH."
        ),
        "",
        (
            f"Exact set match: {fundus['exact']}/{eyes} ({fundus['exact'] / eyes:.1%}); file letters ⊆ "
            f"keyword codes: {fundus['contains']}/{eyes} ({fundus['contains'] / eyes:.1%}); eyes with no "
            f"code (quality notes only): {fundus['no_code']}."
        ),
        "",
        "| Code | Support | Labelled | Precision | Recall | F1 | κ |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [_row(f"{code} {ODIR_CLASSES[code]}", fundus["per_class"][code]) for code in ODIR_CLASSES]
    return lines


def render(chest: dict, negative: dict, skipped: Counter, n_cases: int, fundus: dict, timing: dict,
           command: str) -> str:
    uname, cpu = _machine()
    lines = [
        "# Report labeler agreement", "",
        f"Command: `{command}`  ",
        (
            f"Machine: `{uname}`; CPU: {cpu}; Python {platform.python_version()}; "
            f"load average at the end {os.getloadavg()[0]:.1f}  "
        ),
        (
            f"Speed: {timing['per_report'] * 1000:.2f} ms per IU report; one 10,000-word report "
            f"{timing['ten_k_words']:.3f} s (best of 3)."
        ),
        "",
        *_chest_lines(chest, negative, skipped, n_cases),
        "",
        *_fundus_lines(fundus),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "labeler_agreement.md")
    parser.add_argument("--errors", metavar="CLASS", help="print the chest disagreements for CLASS and stop")
    parser.add_argument("--uncertain", default="positive", choices=("positive", "negative", "ignore"),
                        help="policy for --errors")
    args = parser.parse_args(argv)
    cases, skipped = load_chest_cases(args.data / "iu-reports.jsonl")
    if args.errors:
        print_errors(cases, args.errors, args.uncertain)
        return 0
    chest, negative = chest_agreement(cases, "positive"), chest_agreement(cases, "negative")
    fundus = fundus_agreement(load_fundus(args.data / "odir5k-256" / "pairs.jsonl"))
    command = " ".join(["python benchmarks/labeler_agreement.py", *(sys.argv[1:] if argv is None else argv)])
    text = render(chest, negative, skipped, len(cases), fundus, speed(cases), command)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
