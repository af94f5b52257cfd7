"""Reading a Prometheus exposition back, for the metrics tests.

The text is parsed with prometheus-client's own parser, so what the tests read is what
Prometheus would: sample names as exposed (``roomcast_layer_sent_total``), labels as a dict.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families


@dataclass(frozen=True)
class Scrape:
    """One exposition: ``families`` maps each family name to (type, help); ``samples`` is a
    list of (sample name, labels, value)."""

    families: dict[str, tuple[str, str]]
    samples: list[tuple[str, dict[str, str], float]]

    @classmethod
    def parse(cls, text: str) -> Scrape:
        families: dict[str, tuple[str, str]] = {}
        samples: list[tuple[str, dict[str, str], float]] = []
        for family in text_string_to_metric_families(text):
            families[family.name] = (family.type, family.documentation)
            for sample in family.samples:
                samples.append((sample.name, dict(sample.labels), float(sample.value)))
        return cls(families, samples)

    def value(self, name: str, **labels: str) -> float:
        """The sum of ``name``'s samples whose labels include ``labels`` (0 if none)."""
        return sum(
            value
            for sample, have, value in self.samples
            if sample == name and _includes(have, labels)
        )

    def label_values(self, name: str, label: str) -> set[str]:
        return {have[label] for sample, have, _ in self.samples if sample == name and label in have}

    def names(self) -> set[str]:
        return {sample for sample, _, _ in self.samples}


def _includes(have: Mapping[str, str], wanted: Mapping[str, str]) -> bool:
    return all(have.get(key) == value for key, value in wanted.items())
