"""``refconv pretrained``: the models this project trained, ready to start from (list, show, path, publish).

``refconv pretrained`` lists the registry (name, architecture, input size, test top-1, whether the weights are
here and match their card). ``publish RUN_DIR --name NAME`` turns a finished pretraining run into the entry's
weights and model card; ``path NAME`` prints the verified weights file (for timm's ``pretrained_cfg_overlay``);
``show NAME`` prints the card, or the commands that make it; ``export NAME DIR`` writes the entry as a folder stock
timm loads (``timm.create_model("local-dir:DIR", pretrained=True)``, or ``hf-hub:`` once uploaded) with its card
as ``README.md``. Everything heavy is imported inside the commands.
"""

from __future__ import annotations

import argparse
import json
import sys

__all__ = ["register"]


def _root_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", metavar="DIR", default=argparse.SUPPRESS,
                   help="registry root (default: $REFCONV_PRETRAINED_DIR, else the package's refconv/weights)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pretrained", help="list the pretrained models made here; publish a run as one",
                       description=__doc__)
    _root_flag(p)
    p.add_argument("--json", action="store_true", help="print the listing as JSON on stdout")
    p.set_defaults(func=list_main)
    actions = p.add_subparsers(dest="action", metavar="ACTION")

    ls = actions.add_parser("list", help="list the registry (the default action)")
    _root_flag(ls)
    ls.add_argument("--json", action="store_true", help="print the listing as JSON on stdout")
    ls.set_defaults(func=list_main)

    show = actions.add_parser("show", help="print an entry's model card (or the commands that make it)")
    show.add_argument("name")
    _root_flag(show)
    show.add_argument("--json", action="store_true", help="print the card JSON")
    show.set_defaults(func=show_main)

    path = actions.add_parser("path", help="print an entry's weights file after checking its SHA-256")
    path.add_argument("name")
    _root_flag(path)
    path.set_defaults(func=path_main)

    _add_export(actions)

    pub = actions.add_parser(
        "publish", help="make an entry from a finished run: copy its weights, hash them, write the card",
        description="Check a finished run against a registry entry (model, classes, channels, input size, data, "
        "full data sets, the packaged recipe), copy its deployable weights under the registry root, load them "
        "strict=True into the stock model, and write the model card (JSON + Markdown + PNG of the curve).")
    pub.add_argument("run_dir", metavar="RUN_DIR", help="the run directory `refconv train --out` wrote")
    pub.add_argument("--name", required=True, help="registry name, e.g. fmnist/mobilenetv3_small_100")
    _root_flag(pub)
    pub.add_argument("--machine", help="what the run trained on, in words (default: the run's machine.txt, else its recorded device)")
    pub.add_argument("--allow-subset", action="store_true",
                     help="publish a run on a training/test subset anyway (the card says so)")
    pub.add_argument("--allow-recipe-diff", action="store_true",
                     help="publish a run whose recipe differs from the entry's (the card lists the differences)")
    pub.add_argument("--overwrite", action="store_true", help="replace the entry's existing weights")
    pub.add_argument("--no-plot", action="store_true", help="do not draw the PNG of the curve")
    pub.set_defaults(func=publish_main)


def _add_export(actions: argparse._SubParsersAction) -> None:
    exp = actions.add_parser(
        "export", help="write an entry as a folder stock timm loads (config.json, model.safetensors, README.md)",
        description="Write the entry's verified weights, timm config (classes, input channels and size, mean/std) "
        "and model card into DIR: timm.create_model('local-dir:DIR', pretrained=True) builds it without refconv, "
        "and the folder uploads as is to the Hugging Face hub (then 'hf-hub:USER/REPO'). timm entries only.")
    exp.add_argument("name")
    exp.add_argument("dir", metavar="DIR", help="the folder to write (must be empty or new, unless --overwrite)")
    exp.add_argument("--overwrite", action="store_true", help="replace the hub files of a non-empty DIR")
    _root_flag(exp)
    exp.set_defaults(func=export_main)


def _root(args: argparse.Namespace) -> str | None:
    return getattr(args, "root", None)


def list_main(args: argparse.Namespace) -> int:
    from ..models import pretrained

    rows = pretrained.list_pretrained(_root(args))
    if getattr(args, "json", False):
        sys.stdout.write(json.dumps(rows) + "\n")
        return 0
    status = {"ok": "yes", "not trained yet": "no (not trained yet)"}
    table = [("name", "architecture", "input", "test top-1", "weights")]
    for r in rows:
        top1 = f"{r['test_top1']:.2f}%" if isinstance(r["test_top1"], (int, float)) else "-"
        table.append((r["name"], r["model"], r["input"], top1, status.get(r["status"], r["status"].upper())))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    missing = [r for r in rows if r["status"] == "not trained yet"]
    if missing:
        print(f"\n{len(missing)} of {len(rows)} entries have no weights yet: `refconv pretrained show NAME` prints the "
              "commands that train and publish them (docs/pretrained.md).")
    return 0


def show_main(args: argparse.Namespace) -> int:
    from ..models import pretrained

    entry = pretrained.entry(args.name)
    files = pretrained.entry_files(args.name, _root(args))
    card = pretrained.read_card(args.name, _root(args))
    if args.json:
        sys.stdout.write(json.dumps(card if card is not None else {"name": entry.name, "model": entry.model,
                                                                     "recipe": entry.recipe, "status": "not trained yet"}) + "\n")
        return 0
    if card is not None and files["markdown"].is_file():
        sys.stdout.write(files["markdown"].read_text())
        print(f"\nweights: {pretrained.weights_status(args.name, _root(args))} ({files['weights']})")
        return 0
    print(f"{entry.name}: {entry.model}, {entry.in_chans}x{entry.image_size}x{entry.image_size} {entry.data}, "
          f"{entry.num_classes} classes. {entry.summary}")
    print("No weights yet. Train and publish them with:")
    print(f"  {entry.train_command()}")
    print(f"  {entry.publish_command()}")
    return 0


def path_main(args: argparse.Namespace) -> int:
    from ..models import pretrained

    print(pretrained.weights_path(args.name, _root(args)))
    return 0


def export_main(args: argparse.Namespace) -> int:
    from ..models.hub import export_pretrained

    out = export_pretrained(args.name, args.dir, root=_root(args), overwrite=args.overwrite)
    print(f"exported {args.name} -> {out} ({', '.join(sorted(p.name for p in out.iterdir()))})\n"
          f"  load it without refconv: timm.create_model('local-dir:{out}', pretrained=True)")
    return 0


def publish_main(args: argparse.Namespace) -> int:
    from ..engine.publish import publish

    card = publish(args.run_dir, args.name, root=_root(args), machine=args.machine, allow_subset=args.allow_subset,
                   allow_recipe_diff=args.allow_recipe_diff, overwrite=args.overwrite, plot=not args.no_plot)
    pl = card["plateau"]
    gain = "n/a" if pl["gain_pt"] is None else f"{pl['gain_pt']:+.2f} pt"
    state = ("an under-trained snapshot, on purpose" if card.get("snapshot") else
             "converged" if pl["converged"] else "NOT converged")
    print(f"published {card['name']}: test top-1 {card['test_top1']:.2f}% after {card['epochs']} epochs "
          f"(last {pl['last_epochs']} epoch(s): {gain}, {state}); "
          f"SHA-256 {card['sha256'][:16]}...")
    from ..models import pretrained

    for kind, path in pretrained.entry_files(card["name"], _root(args)).items():
        if path.is_file():
            print(f"  {kind}: {path}")
    return 0
