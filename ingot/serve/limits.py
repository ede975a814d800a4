"""What one client may ask of the server: caps checked at the edge, before anything reaches the engine.

Each field is an `ingot serve` flag of the same name (`max_stop_strings` is --max-stop-strings); the
defaults are the documented ones (README, "Serving safely"). A request over a cap gets a 4xx naming
the field, the limit and the flag; none of them can be turned off, only moved.

    cap                         default   answer   why
    max_prompts_per_request          64   400      each prompt is a request in the engine (and a --max-queue slot)
    max_sequences_per_request       256   400      n x prompts: one request cannot queue thousands of sequences
    max_stop_strings                 16   400      stop strings become an automaton built on the engine's thread
    max_stop_string_chars          1024   400        (~1 us per character, once per request)
    max_body_bytes                8 MiB   413      a prompt of ~2M tokens of text: past any engine's max_input_len
    max_header_bytes             32 KiB   431      request line and headers (uvicorn's h11 allows ~16 KiB, as a 400)
    read_timeout                   30 s   408      for a request's headers, and again for its body
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from ingot.errors import ConfigError
from ingot.sampling_params import MAX_STOP_CHARS


_LOWEST = {"max_body_bytes": 1024, "max_header_bytes": 1024, "read_timeout": 0.1}  # others: 1


@dataclass(frozen=True)
class ServeLimits:
    max_prompts_per_request: int = 64
    max_sequences_per_request: int = 256
    max_stop_strings: int = 16
    max_stop_string_chars: int = 1024
    max_body_bytes: int = 8 << 20
    max_header_bytes: int = 32 << 10
    read_timeout: float = 30.0  # seconds

    def __post_init__(self) -> None:
        for f in fields(self):
            value, low = getattr(self, f.name), _LOWEST.get(f.name, 1)
            kinds, what = ((int, float), "a number") if f.type == "float" else (int, "an integer")
            if not (isinstance(value, kinds) and not isinstance(value, bool) and value >= low):
                raise ConfigError(f"{flag(f.name)} {value!r} must be {what} >= {low}")
        stop_chars = self.max_stop_strings * self.max_stop_string_chars
        if stop_chars > MAX_STOP_CHARS:
            raise ConfigError(f"--max-stop-strings {self.max_stop_strings} x --max-stop-string-chars "
                              f"{self.max_stop_string_chars} = {stop_chars} characters, over the engine's bound of "
                              f"{MAX_STOP_CHARS} stop characters per request; lower one of them")


def flag(name: str) -> str:
    """The `ingot serve` flag that sets a ServeLimits field."""
    return "--" + name.replace("_", "-")
