"""Summaries of timings in seconds, reported in µs."""
from __future__ import annotations

import statistics


def median_us(samples: list) -> float:
    return statistics.median(samples) * 1e6


def p10_us(samples: list) -> float:
    return sorted(samples)[len(samples) // 10] * 1e6


def p50_ms(samples: list) -> float:
    return statistics.median(samples) * 1e3


def mean_ms(samples: list) -> float:
    return statistics.mean(samples) * 1e3
