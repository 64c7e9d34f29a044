"""Exceptions the CLI maps to exit codes: BadInput -> 2, everything else -> 1."""


class PrhBenchError(Exception):
    """Base of the harness's own errors."""


class BadInput(PrhBenchError):
    """The user's input (a manifest, a suite name, an option) is wrong; exit code 2."""


class ManifestError(BadInput):
    """One or more problems in manifest files, each naming the file and the field."""

    def __init__(self, problems: list[str], data: object = None):
        self.problems = problems
        self.data = data  # the decoded document, when there was one: lets callers check what else they can
        super().__init__("\n".join(problems))


class WeightsUnavailable(PrhBenchError):
    """A model's weights cannot be had on this machine; the message says how to provide them."""


class ExtractionFailed(PrhBenchError):
    """A model loaded but produced unusable features (NaN, wrong shape)."""
