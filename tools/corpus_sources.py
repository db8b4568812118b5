"""The photographs `tools/make_corpus.py` cuts its corpus from: which files of which Debian
and PyPI packages are real photographs, and their licences.

Chosen by looking at every image the candidate packages ship (contact sheets of all of
them): only photographs of real scenes count, not vector art, 3D or low-poly renders,
gradients, logos, drawings, paintings, synthetic test patterns or textures made by a
program. Left out after that look, with no photograph in them: ukui-wallpapers,
lomiri-wallpapers (2 renders), gnome-backgrounds 43 (all renders), sway-backgrounds (a
logo), desktop-base and debian-edu-artwork-* (Debian theme artwork and logos),
palapeli-data's puzzle backgrounds (generated textures). Left out on purpose:
stellarium-data (panorama tiles with a transparent sky, planet maps, telescope frames),
stereo or time pairs (only one image of each: aloeL not aloeR, basketball1 not
basketball2, ...), images processed to be degraded (licenseplate_motion, ela_modified),
photographs of printed text or drawn shapes, scikit-image's motorcycle pair (no licence
stated) and plasma's Volna (a low-poly render). `mate-backgrounds` is reserved as unseen
evaluation data and is refused (`RESERVED`).

Each licence is as the package's copyright file (`/usr/share/doc/PKG/copyright`) gives it
for the file (Debian), or as scikit-image's docstring of `skimage.data.<name>` states it;
`make_corpus.py` checks that the copyright file names the licence.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["RESERVED", "RESERVED_DIRS", "SKIMAGE", "Photo", "debian_photos", "skimage_photos"]

RESERVED = ("mate-backgrounds",)  # unseen evaluation data: never in a training corpus
RESERVED_DIRS = ("/usr/share/backgrounds/mate/",)  # where mate-backgrounds puts its files
SKIMAGE = "scikit-image"  # the PyPI distribution whose sample photographs are used


@dataclass(frozen=True)
class Photo:
    """One photograph as the table lists it: `pattern` is a glob (absolute, or relative to
    the package's data folder for PyPI packages); when it matches several files (one
    wallpaper at several resolutions), the one with the most pixels is used."""

    package: str
    name: str
    pattern: str
    licence: str


_PLASMA = [
    "BytheWater",
    "ColdRipple",
    "ColorfulCups",
    "DarkestHour",
    "EveningGlow",
    "FallenLeaf",
    "Grey",
    "Kite",
    "OneStandsOut",
    "Path",
    "summer_1am",
]
_LOMIRI_1604 = {
    "Bridge_by_Sander_Klootwijk": "CC-BY-SA-4.0",
    "Dragonfly_by_Bolly": "CC-BY-SA-4.0",
    "Picture_0B_by_freespace": "CC-BY-4.0",
    "Picture_1A_by_freespace": "CC-BY-4.0",
    "Wine_by_Jakkub_Mede": "CC-BY-4.0",
    "aitzgorri_by_Aitzol_Berasategi": "CC-BY-4.0",
    "analogpattern_by_Peter_Nerlich": "CC-BY-SA-4.0",
    "free_by_Peter_Nerlich": "CC-BY-SA-4.0",
    "friends_by_Aitzol_Berasategi": "CC-BY-4.0",
    "greentock_by_Peter_Nerlich": "CC-BY-SA-4.0",
    "life_by_Aitzol_Berasategi": "CC-BY-4.0",
    "picosdeeuropa_by_Aitzol_Berasategi": "CC-BY-4.0",
    "seeding_by_Clements_Engelhardt": "CC0-1.0",
    "sunset_by_Aitzol_Berasategi": "CC-BY-4.0",
}
_LOMIRI_2004 = {"Kleiber_by_Lukas_Baubkus": "CC-BY-SA-3.0"}
_PALAPELI = [
    "castle-maintenon",
    "cincinnati-bridge",
    "citrus-fruits",
    "european-honey-bee",
    "panther-chameleon-female",
]
_OPENCV = [
    "aero1.jpg",
    "aloeL.jpg",
    "apple.jpg",
    "baboon.jpg",
    "basketball1.png",
    "board.jpg",
    "box_in_scene.png",
    "building.jpg",
    "butterfly.jpg",
    "chicky_512.png",
    "ela_original.jpg",
    "fruits.jpg",
    "graf1.png",
    "home.jpg",
    "left.jpg",
    "leuvenA.jpg",
    "messi5.jpg",
    "orange.jpg",
    "rubberwhale1.png",
    "squirrel_cls.jpg",
    "stuff.jpg",
]
_OPENCV_HFS = ["000.jpg", "001.jpg", "002.jpg"]
_SKIMAGE = {
    "astronaut.png": "public domain (no known copyright restrictions)",
    "brick.png": "CC0",
    "camera.png": "CC0",
    "chelsea.png": "CC0",
    "coffee.png": "CC0",
    "coins.png": "no known copyright restrictions",
    "grass.png": "CC0",
    "gravel.png": "CC0",
    "hubble_deep_field.jpg": "public domain",
    "ihc.png": "no known copyright restrictions",
    "moon.png": "CC0",
    "retina.jpg": "CC0 1.0",
    "rocket.jpg": "public domain",
}


def _stem(filename: str) -> str:
    return filename.rsplit(".", 1)[0]


def debian_photos() -> list[Photo]:
    """The photographs of the Debian packages (see the module doc)."""
    wallpapers, backgrounds = "/usr/share/wallpapers", "/usr/share/backgrounds"
    opencv = "/usr/share/doc/opencv-doc/examples"
    photos = [
        Photo("plasma-workspace-wallpapers", n, f"{wallpapers}/{n}/contents/images/*", "GPL-2+")
        for n in _PLASMA
    ]
    for package, table in (
        ("lomiri-wallpapers-16.04", _LOMIRI_1604),
        ("lomiri-wallpapers-20.04", _LOMIRI_2004),
    ):
        photos += [Photo(package, n, f"{backgrounds}/{n}.jpg", lic) for n, lic in table.items()]
    photos += [
        Photo("palapeli-data", n, f"/usr/share/palapeli/collection/{n}.jpg", "GPL-2+")
        for n in _PALAPELI
    ]
    licence = "Apache-2.0 AND BSD-3-Clause"
    photos += [Photo("opencv-doc", _stem(f), f"{opencv}/data/{f}", licence) for f in _OPENCV]
    photos += [
        Photo("opencv-doc", f"hfs-{_stem(f)}", f"{opencv}/hfs/data/{f}", licence)
        for f in _OPENCV_HFS
    ]
    return photos


def skimage_photos() -> list[Photo]:
    """scikit-image's sample photographs that are on disk without a download, with the
    licence their docstrings state (patterns relative to `skimage/data/`)."""
    return [Photo(SKIMAGE, _stem(f), f, lic) for f, lic in _SKIMAGE.items()]
