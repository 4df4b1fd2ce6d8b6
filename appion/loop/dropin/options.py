"""Classic options as data, and the parsers built from them.

Each option is an `Opt`: its flags, its argparse keyword arguments (help text included) and what it does
here: `None` when it maps to appion's behaviour (the help says how), `NoEffect(reason)` when appion has
nothing it could mean (accepted; one warning line naming it when given), or `OnlyEngines(...)` when only
some engines use it.  Parsing is optparse-like, as classic Appion's: a unique prefix of a long option is
accepted (several spellings of one option are one option, not an ambiguity).

Light on purpose (argparse only): `--help` of a drop-in imports nothing else.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field


class DropinError(Exception):
    """A person's mistake on a drop-in's command line (no such session, unknown image ...): one line, exit 2."""


@dataclass(frozen=True)
class NoEffect:
    """Appion has nothing this option could change; `reason` says why (and what to use instead, if anything)."""

    reason: str

    def warning(self, flag: str, args: argparse.Namespace) -> str | None:
        return f"{flag} has no effect: {self.reason}"


@dataclass(frozen=True)
class OnlyEngines:
    """Used by the listed engines only; with another engine it has no effect."""

    engines: tuple[str, ...]
    what: str  # what the engines do with it

    def warning(self, flag: str, args: argparse.Namespace) -> str | None:
        engine = getattr(args, "engine", None)
        if engine in self.engines:
            return None
        return (f"{flag} has no effect with --engine {engine}: only {', '.join(self.engines)} "
                f"{'uses' if len(self.engines) == 1 else 'use'} it ({self.what})")


@dataclass(frozen=True)
class NotApplied:
    """Meaningful here, but not applied by this version; `reason` says what is used instead."""

    reason: str

    def warning(self, flag: str, args: argparse.Namespace) -> str | None:
        return f"{flag} is not applied: {self.reason}"


@dataclass(frozen=True)
class Opt:
    """One option: flags, argparse keyword arguments, and what it does here (None: it maps to appion's
    behaviour, described by its help)."""

    flags: tuple[str, ...]
    kwargs: dict = field(default_factory=dict)
    effect: NoEffect | OnlyEngines | NotApplied | None = None

    @property
    def name(self) -> str:
        """The flag named in warnings: the first long spelling."""
        return next((f for f in self.flags if f.startswith("--")), self.flags[0])

    @property
    def usage_flag(self) -> str:
        """The flag classic writes in ScriptParamValue.usage: the last spelling (optparse's `-R/--rundir/--outdir`
        gives `--outdir`)."""
        return self.flags[-1]

    def help_text(self) -> str:
        text = self.kwargs.get("help", "")
        if isinstance(self.effect, NoEffect):
            return f"{text} [accepted; no effect here: {self.effect.reason}]".strip()
        if isinstance(self.effect, NotApplied):
            return f"{text} [accepted; not applied: {self.effect.reason}]".strip()
        if isinstance(self.effect, OnlyEngines):
            return f"{text} [--engine {'/'.join(self.effect.engines)} only]".strip()
        return text


Group = tuple[str, tuple[Opt, ...]]  # (title, options)


class ClassicParser(argparse.ArgumentParser):
    """argparse with optparse's prefix rule: a prefix matching several spellings of one option is that option."""

    def _get_option_tuples(self, option_string):
        tuples = super()._get_option_tuples(option_string)
        seen, unique = set(), []
        for t in tuples:
            if id(t[0]) not in seen:
                seen.add(id(t[0]))
                unique.append(t)
        return unique


def build_parser(prog: str, description: str, groups: tuple[Group, ...], *, track: bool = False) -> ClassicParser:
    """The drop-in's parser.  track=True: a twin whose options store under `opt<N>` with no defaults, so that
    parsing tells which options a command line gave (see calc_given)."""
    p = ClassicParser(prog=prog, description=description, allow_abbrev=True, add_help=not track,
                      usage="%(prog)s --projectid=## --runname=<runname> --session=<session> --preset=<preset> "
                            "[--description='<text>'] [--commit] [options]")
    for title, opts in groups:
        g = p.add_argument_group(title) if title else p
        for opt in opts:
            kwargs = dict(opt.kwargs)
            if track:
                kwargs["dest"] = f"opt{id(opt)}"
                kwargs["default"] = argparse.SUPPRESS
                kwargs.pop("required", None)
            else:
                kwargs["help"] = opt.help_text()
            g.add_argument(*opt.flags, **kwargs)
    return p


def all_opts(groups: tuple[Group, ...]) -> list[Opt]:
    return [opt for _, opts in groups for opt in opts]


def calc_given(prog: str, groups: tuple[Group, ...], argv: list[str]) -> list[Opt]:
    """The options a command line gives (in table order), whatever spelling or prefix it used.  Call after the
    real parser accepted argv."""
    seen = vars(build_parser(prog, "", groups, track=True).parse_args(argv))
    return [opt for opt in all_opts(groups) if f"opt{id(opt)}" in seen]


def calc_warnings(given: list[Opt], args: argparse.Namespace) -> list[str]:
    """One line per given option that has no effect here (for the engine chosen)."""
    out = []
    for opt in given:
        line = opt.effect.warning(opt.name, args) if opt.effect is not None else None
        if line:
            out.append(line)
    return out


def calc_script_params(groups: tuple[Group, ...], args: argparse.Namespace,
                       names: dict[str, str]) -> tuple[tuple[str, str, str], ...]:
    """(name, value, usage) per parameter, as classic's ScriptParamName/ScriptParamValue rows hold them.

    As classic: every parameter with a value is recorded, named by its destination (`names` renames appion's
    to classic's); usage is `--flag=value`, or for a true/false parameter the flag that sets that value
    (`--no-commit`); a boolean no flag can set (e.g. wait=True) is not recorded."""
    by_dest: dict[str, list[Opt]] = {}
    for opt in all_opts(groups):
        by_dest.setdefault(opt.kwargs.get("dest") or opt.name.lstrip("-").replace("-", "_"), []).append(opt)
    out = []
    for dest, value in sorted(vars(args).items()):
        opts = by_dest.get(dest)
        if value is None or not opts:
            continue
        if isinstance(value, bool):
            action = "store_true" if value else "store_false"
            setter = next((o for o in opts if o.kwargs.get("action") == action), None)
            if setter is None:
                continue
            usage = setter.usage_flag
        else:
            text = str(value)
            usage = f"{opts[0].usage_flag}=" + (f"'{text}'" if " " in text else text)
        out.append((names.get(dest, dest), str(value), usage))
    return tuple(out)
