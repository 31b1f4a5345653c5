"""Write the Home page diagram: route -> compress -> module -> extract.

``sma.svg`` (wide: step labels left of the rows) and ``sma-narrow.svg`` (phones: labels
above the rows, six tokens, larger type once scaled to a 360-pixel column).

Run: ``python docs/assets/make_diagram.py`` (no dependencies).
"""

from __future__ import annotations

from pathlib import Path

PROB = (0.31, 0.83, 0.22, 0.71, 0.92, 0.12, 0.66, 0.40)
ON, OFF, MOD, INK, MUTED = "#3f51b5", "#e3e5ee", "#ff9800", "#1f2430", "#6b7080"
WIDE = dict(L=8, active=(1, 3, 4, 6), box=54, gap=12, x0=200, W=760, label_above=False, shift=2)
NARROW = dict(L=6, active=(1, 3, 4), box=50, gap=10, x0=22, W=400, label_above=True, shift=1)


def box(x, y, w, h, fill, text="", ink="#fff", size=15, rx=7, stroke="none"):
    s = f'<rect x="{x}" y="{y}" width="{w}" height="{h}" rx="{rx}" fill="{fill}" stroke="{stroke}"/>'
    if text:
        s += (f'<text x="{x + w / 2}" y="{y + h / 2 + size * 0.35}" font-size="{size}" fill="{ink}" '
              f'text-anchor="middle">{text}</text>')
    return s


def arrow(x1, y1, x2, y2, color=MUTED):
    return (f'<line x1="{x1}" y1="{y1}" x2="{x2}" y2="{y2}" stroke="{color}" stroke-width="1.6" '
            f'marker-end="url(#head)"/>')


def draw(L, active, box_w, gap, x0, W, label_above, shift) -> str:
    def x_of(i):
        return x0 + i * (box_w + gap)

    p, y = [], 30
    rows = {}

    def label(title, sub):
        nonlocal y
        if label_above:  # title and shape on one line above the row
            p.append(f'<text x="{x0}" y="{y + 16}" font-size="18" font-weight="600" fill="{INK}">{title}'
                     f'<tspan font-size="15" font-weight="400" fill="{MUTED}">  {sub}</tspan></text>')
            y += 28
        else:
            p.append(f'<text x="24" y="{y + 18}" font-size="17" font-weight="600" fill="{INK}">{title}</text>'
                     f'<text x="24" y="{y + 38}" font-size="13" fill="{MUTED}">{sub}</text>')

    label("x", "[B, L, D]")
    for i in range(L):
        p.append(box(x_of(i), y, box_w, 40, "#ffffff", f"x{i}", ink=INK, stroke="#9aa0b4"))
    y += 75
    label("1. route", "router(x) → p, active")
    rows["route"] = y
    for i in range(L):
        on = i in active
        p.append(box(x_of(i), y, box_w, 40, ON if on else OFF, f"{PROB[i]:.2f}", ink="#fff" if on else MUTED))
    y += 90
    top = y  # arrows end above the label when it sits above the row
    label("2. compress", "in order, [B, K, D]")
    for k, i in enumerate(active):
        xk = x_of(k + shift)
        p.append(arrow(x_of(i) + box_w / 2, rows["route"] + 42, xk + box_w / 2, (top if label_above else y) - 4))
        p.append(box(xk, y, box_w, 40, ON, f"x{i}"))
        p.append(f'<text x="{xk + box_w / 2}" y="{y + 58}" font-size="13" fill="{MUTED}" '
                 f'text-anchor="middle">pos {i}</text>')
    y += 85
    label("3. module", "f(values, mask, positions)")
    rows["module"] = y
    left, right = x_of(shift), x_of(shift + len(active) - 1) + box_w
    p.append(box(left, y, right - left, 44, MOD, "f: attention, MLP, ...", size=15))
    y += 105
    top = y
    label("4. extract", "p · f(x) back in place")
    for k, i in enumerate(active):
        xk = x_of(k + shift)
        p.append(arrow(xk + box_w / 2, rows["module"] + 46, x_of(i) + box_w / 2, (top if label_above else y) - 4))
    for i in range(L):
        on = i in active
        p.append(box(x_of(i), y, box_w, 40, MOD if on else OFF, f"p·f{i}" if on else "0",
                     ink="#fff" if on else MUTED, size=14))
    H = y + 65
    defs = (f'<defs><marker id="head" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
            f'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="{MUTED}"/></marker></defs>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="{W}" height="{H}" '
            f'font-family="Inter, Roboto, Helvetica, Arial, sans-serif" role="img" '
            f'aria-label="Sparse Modular Activation: route, compress, module, extract">'
            f'<title>route -> compress -> module -> extract</title>{defs}'
            f'<rect x="0" y="0" width="{W}" height="{H}" rx="14" fill="#ffffff"/>{"".join(p)}</svg>\n')


def main() -> None:
    for name, layout in (("sma.svg", WIDE), ("sma-narrow.svg", NARROW)):
        out = Path(__file__).with_name(name)
        layout = dict(layout)
        out.write_text(draw(layout.pop("L"), layout.pop("active"), layout.pop("box"), **layout))
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
