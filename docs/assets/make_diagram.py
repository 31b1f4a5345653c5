"""Write ``docs/assets/sma.svg``: route -> compress -> module -> extract, for the Home page.

Run: ``python docs/assets/make_diagram.py`` (no dependencies).
"""

from __future__ import annotations

from pathlib import Path

L = 8
ACTIVE = (1, 3, 4, 6)
PROB = (0.31, 0.83, 0.22, 0.71, 0.92, 0.12, 0.66, 0.40)
W, H = 760, 450
BOX, GAP = 54, 12
X0 = 200  # left edge of the token row
ON, OFF, MOD, INK, MUTED = "#3f51b5", "#e3e5ee", "#ff9800", "#1f2430", "#6b7080"


def x_of(i: int) -> float:
    return X0 + i * (BOX + GAP)


def box(x, y, w, h, fill, text="", ink="#fff", size=15, rx=7, stroke="none"):
    s = f'<rect x="{x}" y="{y}" width="{w}" height="{h}" rx="{rx}" fill="{fill}" stroke="{stroke}"/>'
    if text:
        s += (f'<text x="{x + w / 2}" y="{y + h / 2 + size * 0.35}" font-size="{size}" fill="{ink}" '
              f'text-anchor="middle">{text}</text>')
    return s


def label(y, title, sub):
    return (f'<text x="24" y="{y}" font-size="17" font-weight="600" fill="{INK}">{title}</text>'
            f'<text x="24" y="{y + 20}" font-size="13" fill="{MUTED}">{sub}</text>')


def arrow(x1, y1, x2, y2, color=MUTED):
    return (f'<line x1="{x1}" y1="{y1}" x2="{x2}" y2="{y2}" stroke="{color}" stroke-width="1.6" '
            f'marker-end="url(#head)"/>')


def main() -> None:
    p = []
    p.append(f'<rect x="0" y="0" width="{W}" height="{H}" rx="14" fill="#ffffff"/>')
    # 1. tokens and router
    y1 = 30
    p.append(label(y1 + 18, "x", "[B, L, D]"))
    for i in range(L):
        p.append(box(x_of(i), y1, BOX, 40, "#ffffff", f"x{i}", ink=INK, stroke="#9aa0b4"))
    y2 = 105
    p.append(label(y2 + 18, "1. route", "router(x) → p, active"))
    for i in range(L):
        on = i in ACTIVE
        p.append(box(x_of(i), y2, BOX, 40, ON if on else OFF, f"{PROB[i]:.2f}", ink="#fff" if on else MUTED))
    # 2. compress
    y3 = 195
    p.append(label(y3 + 18, "2. compress", "in order, [B, K, D]"))
    for k, i in enumerate(ACTIVE):
        xk = x_of(k) + (BOX + GAP) * 2
        p.append(arrow(x_of(i) + BOX / 2, y2 + 42, xk + BOX / 2, y3 - 4))
        p.append(box(xk, y3, BOX, 40, ON, f"x{i}"))
        p.append(f'<text x="{xk + BOX / 2}" y="{y3 + 56}" font-size="12" fill="{MUTED}" '
                 f'text-anchor="middle">pos {i}</text>')
    # 3. module
    y4 = 280
    p.append(label(y4 + 18, "3. module", "f(values, mask, positions)"))
    left, right = x_of(2), x_of(5) + BOX
    p.append(box(left, y4, right - left, 44, MOD, "f  (attention, MLP, conv, ...)", size=15))
    # 4. extract
    y5 = 385
    p.append(label(y5 + 18, "4. extract", "p · f(x) back in place"))
    for k, i in enumerate(ACTIVE):
        xk = x_of(k) + (BOX + GAP) * 2
        p.append(arrow(xk + BOX / 2, y4 + 46, x_of(i) + BOX / 2, y5 - 4))
    for i in range(L):
        on = i in ACTIVE
        p.append(box(x_of(i), y5, BOX, 40, MOD if on else OFF, f"p·f{i}" if on else "0",
                     ink="#fff" if on else MUTED, size=14))
    defs = (f'<defs><marker id="head" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
            f'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="{MUTED}"/></marker></defs>')
    svg = (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="{W}" height="{H}" '
           f'font-family="Inter, Roboto, Helvetica, Arial, sans-serif" role="img" '
           f'aria-label="Sparse Modular Activation: route, compress, module, extract">'
           f'<title>route -> compress -> module -> extract</title>{defs}{"".join(p)}</svg>\n')
    out = Path(__file__).with_name("sma.svg")
    out.write_text(svg)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
