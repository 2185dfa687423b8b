"""``eqcryo downsample INPUT -D BOX -o OUTPUT``: Fourier cropping of stacks and maps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..data.atomic import refuse_overwriting_inputs
from ..data.errors import InputError
from ..data.io import load_particles
from ..data.mrc import StackWriter, mrc_header_info, read_volume, write_volume
from ..data.star import write_star
from ..physics.lattice import fourier_crop_2d, fourier_crop_3d
from .common import positive_int, verb_parser


def add_parser(sub):
    p = verb_parser(sub, "downsample", "Fourier-crop an image stack or a map to a smaller box",
                    "Down-sample by Fourier cropping (no aliasing; pixel values keep their scale). The physical "
                    "box is unchanged, so the pixel size becomes apix * L / D; it is written to the MRC header "
                    "and, for STAR input, to a new STAR file (--out-star) whose images point to OUTPUT. Shifts "
                    "stay in Å.",
                    "eqcryo downsample particles.star -D 64 -o particles.64.mrcs --out-star particles.64.star")
    p.add_argument("input", help="cubic .mrc map, or a particle stack/metadata (.mrcs, .star, .cs, .txt)")
    p.add_argument("-D", "--box", type=positive_int, required=True, help="new box size in pixels")
    p.add_argument("-o", "--output", required=True, help="output .mrc (map) or .mrcs (stack)")
    p.add_argument("--out-star", help="for particle input: write metadata pointing to the new stack")
    p.add_argument("--datadir", help="folder of the image stacks named in the metadata")
    p.add_argument("--chunk", type=positive_int, default=1000, help="images per chunk (bounds memory)")
    p.set_defaults(func=run)


def run(args) -> int:
    refuse_overwriting_inputs(args.output, [args.input])
    if args.out_star:
        refuse_overwriting_inputs(args.out_star, [args.input, args.output])
    path = Path(args.input)
    if path.suffix.lower() == ".mrc":
        h = mrc_header_info(path)
        if h["nx"] == h["ny"] == h["nz"] and h["nz"] > 1:
            v, apix = read_volume(path)
            if args.box > v.shape[0]:
                raise InputError(f"{path}: new box {args.box} is larger than {v.shape[0]}")
            out = fourier_crop_3d(torch.from_numpy(v).double(), args.box).float().numpy()
            write_volume(args.output, out, (apix or 1.0) * v.shape[0] / args.box)
            print(f"wrote {args.output}: {args.box}^3 at {(apix or 1.0) * v.shape[0] / args.box:.4f} Å/px")
            return 0
    t = load_particles(path, datadir=args.datadir)
    if t.images is None:
        raise InputError(f"{path}: no images to down-sample")
    refuse_overwriting_inputs(args.output, [args.input], tables=(t,))
    refuse_overwriting_inputs(args.out_star, [args.input], tables=(t,))
    L = t.validate_images()
    if args.box > L:
        raise InputError(f"{path}: new box {args.box} is larger than {L}")
    apix = t.pixel_size() if t.apix is not None else 1.0
    new_apix = apix * L / args.box
    with StackWriter(args.output, t.n, args.box, new_apix) as w:
        for s in tqdm(range(0, t.n, args.chunk), desc="downsample", unit="chunk"):
            ids = np.arange(s, min(s + args.chunk, t.n))
            imgs = torch.from_numpy(t.images.read(ids)).double()
            w.write(s, fourier_crop_2d(imgs, args.box).float().numpy())
    print(f"wrote {args.output}: {t.n} images of {args.box} px at {new_apix:.4f} Å/px")
    if args.out_star:
        t.box, t.apix = args.box, np.full(t.n, new_apix)
        names = np.array([f"{i + 1:06d}@{Path(args.output).resolve()}" for i in range(t.n)], dtype=object)
        write_star(args.out_star, t, image_names=names)
        print(f"wrote {args.out_star}")
    return 0
