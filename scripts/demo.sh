#!/usr/bin/env bash
# The demo: grows as the pipeline lands. Today: build a test map, project it at random poses
# with CTF (written as RELION STAR + MRCS), read it back, down-sample, and measure FSC.
set -euo pipefail
OUT="${1:-demo_out}"
PY=.venv/bin/python
mkdir -p "$OUT"
"$PY" - "$OUT" <<'PYEOF'
import sys, numpy as np, torch
from eqcryo.data.mrc import write_volume
from eqcryo.data.particles import ParticleTable
from eqcryo.data.star import write_star
from eqcryo.physics.rotations import random_rotations
out = sys.argv[1]
L, apix, n = 64, 4.0, 200
g = torch.Generator().manual_seed(0)
k = torch.arange(L, dtype=torch.float64) - L // 2
z, y, x = torch.meshgrid(k, k, k, indexing="ij")
v = torch.zeros(L, L, L, dtype=torch.float64)
for c, s in zip((torch.rand(8, 3, generator=g) * 24 - 12).tolist(), (torch.rand(8, generator=g) * 2 + 2).tolist()):
    v += torch.exp(-((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) / (2 * s * s))
write_volume(f"{out}/phantom.mrc", v.float().numpy(), apix)
rng = np.random.default_rng(0)
ctf = {"defocus_u_angstrom": rng.uniform(1e4, 2.5e4, n), "voltage_kv": np.full(n, 300.0), "cs_mm": np.full(n, 2.7),
       "amplitude_contrast": np.full(n, 0.1), "phase_shift_degrees": np.zeros(n), "bfactor_angstrom2": np.zeros(n),
       "defocus_angle_degrees": rng.uniform(-90, 90, n)}
ctf["defocus_v_angstrom"] = ctf["defocus_u_angstrom"] - 500
t = ParticleTable(n=n, box=L, apix=np.full(n, apix), ctf=ctf, rotations=random_rotations(n, g).numpy(),
                  shifts_angstrom=rng.normal(0, 8.0, (n, 2)),
                  image_names=np.array([f"{i + 1:06d}@projections.mrcs" for i in range(n)], dtype=object))
write_star(f"{out}/particles.star", t)
print(f"wrote {out}/phantom.mrc and {out}/particles.star ({n} random poses, CTF, shifts)")
PYEOF
E=".venv/bin/eqcryo"
$E project "$OUT/phantom.mrc" --poses "$OUT/particles.star" -o "$OUT/projections.mrcs" --ctf
$E info "$OUT/particles.star" --check
$E downsample "$OUT/phantom.mrc" -D 32 -o "$OUT/phantom_32.mrc"
$E downsample "$OUT/phantom_32.mrc" -D 16 -o "$OUT/phantom_16.mrc"
echo "FSC of the map against itself (sanity: 1 everywhere):"
$E fsc "$OUT/phantom.mrc" "$OUT/phantom.mrc" --plot "$OUT/fsc.png"
echo "demo finished: outputs in $OUT/"
