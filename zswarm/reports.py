"""Reports of lying servers: what a client found, as plain records (no torch, no network).

A client that finds a server lying (zswarm.client.verification, spot_checks) keeps a `LieReport`
in memory and, with ClientConfig.report_path, appends it to a JSON-lines file that
`zswarm-inspect reports PATH` shows. Reports stay with the client that made them: a record anyone
may publish in the DHT is an accusation anyone may forge (an attacker would smear honest servers),
so a report is evidence for this client's operator, not a swarm-wide verdict.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field, fields

logger = logging.getLogger(__name__)

REPORT_VERSION = 1


@dataclass
class LieReport:
    """One server found wrong by this client: on which blocks and positions, by how much, and who
    said otherwise. `verdict`: "outvoted" (a third server sided with the others), "no_majority"
    (no third server, or it agreed with neither: both sides are distrusted), or "implausible"
    (a reply failed `check_reply`)."""

    peer_id: str
    model_id: str
    start: int
    end: int
    verdict: str
    detail: str
    position: int = -1  # the first position found wrong (-1: not a spot check)
    relative_error: float = 0.0
    tolerance: float = 0.0
    witnesses: list[str] = field(default_factory=list)  # servers whose outputs disagreed with it
    time: float = field(default_factory=time.time)
    version: int = REPORT_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, line: str) -> "LieReport":
        """Parse one line of a report file; ValueError on anything else."""
        data = json.loads(line)
        if not isinstance(data, dict) or data.get("version") != REPORT_VERSION:
            raise ValueError("not a version-1 report")
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


class ReportLog:
    """The reports of one client connection: in memory (`reports`), and appended to `path` if given."""

    def __init__(self, path: str | None = None):
        self.path = path
        self.reports: list[LieReport] = []

    def add(self, report: LieReport) -> None:
        self.reports.append(report)
        if self.path is None:
            return
        try:
            with open(self.path, "a") as out:
                out.write(report.to_json() + "\n")
        except OSError as exc:  # a report that cannot be written must not fail the user's step
            logger.warning("cannot append a report to %s: %s", self.path, exc)


def read_reports(path: str) -> tuple[list[LieReport], int]:
    """The reports in a report file, and how many of its lines were not reports (skipped)."""
    reports, skipped = [], 0
    with open(path) as lines:
        for line in lines:
            if not line.strip():
                continue
            try:
                reports.append(LieReport.from_json(line))
            except (ValueError, TypeError):
                skipped += 1
    return reports, skipped
