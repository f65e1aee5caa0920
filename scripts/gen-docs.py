"""Generate the README's role variable tables from roles/*/meta/argument_specs.yml.

The tables live between the markers `<!-- role-variables:start -->` and
`<!-- role-variables:end -->`. With --check nothing is written and the exit code
says whether the README is current.
"""
import argparse
import glob
import os
import sys

import yaml

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(TOP, "README.md")
START, END = "<!-- role-variables:start -->", "<!-- role-variables:end -->"


def cell(value):
    text = " ".join(str(value).split())
    return text.replace("|", "\\|")


def fmt_default(opt):
    if "default" not in opt:
        return "*(computed)*" if not opt.get("required") else "*(required)*"
    value = opt["default"]
    if isinstance(value, (dict, list)):
        value = yaml.safe_dump(value, default_flow_style=True, width=10000).strip()
    return "`%s`" % cell(value) if value != "" else '`""`'


def role_tables():
    out = []
    for spec_path in sorted(glob.glob(os.path.join(TOP, "roles", "*", "meta", "argument_specs.yml"))):
        role = spec_path.split(os.sep)[-3]
        with open(spec_path) as f:
            spec = yaml.safe_load(f)["argument_specs"]["main"]
        out.append("### Role `torexit.hardening.%s`\n" % role)
        out.append(cell(spec.get("short_description", "")) + "\n")
        out.append("| variable | type | default | description |")
        out.append("|---|---|---|---|")
        for name, opt in sorted(spec.get("options", {}).items()):
            desc = opt.get("description", "")
            if isinstance(desc, list):
                desc = " ".join(desc)
            if opt.get("choices"):
                desc += " Choices: %s." % ", ".join("`%s`" % c for c in opt["choices"])
            kind = opt.get("type", "str")
            if kind == "list" and opt.get("elements"):
                kind = "list of %s" % opt["elements"]
            out.append("| `%s` | %s | %s | %s |" % (name, kind, fmt_default(opt), cell(desc)))
        out.append("")
    return "\n".join(out)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if README.md is not current")
    args = parser.parse_args()
    with open(README) as f:
        text = f.read()
    if START not in text or END not in text:
        print("gen-docs: README.md lacks the %s / %s markers" % (START, END), file=sys.stderr)
        return 1
    head, rest = text.split(START, 1)
    tail = rest.split(END, 1)[1]
    new = head + START + "\n" + role_tables() + "\n" + END + tail
    if args.check:
        if new != text:
            print("gen-docs: README.md role tables are out of date; run `make docs`", file=sys.stderr)
            return 1
        print("gen-docs: README.md role tables are current")
        return 0
    if new != text:
        with open(README, "w") as f:
            f.write(new)
        print("gen-docs: README.md updated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
