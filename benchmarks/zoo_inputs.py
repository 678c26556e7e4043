"""Real inputs for the model zoo: photos, text, sentences and speech-like audio, all from installed packages.

Nothing is downloaded. Photos are scikit-image's bundled ``skimage.data`` images (astronaut, coffee, chelsea,
rocket, ...), cropped and resized; text is the Zen of Python (``this``), rendered with Pillow's bundled font
for OCR and tokenized for the text encoder. No wheel in the zoo ships audio, so speech is synthesized
(see :func:`speech_like`): voiced syllables (a jittered glottal pulse train through three formant
resonators, vowel by vowel) with fricative bursts and pauses, which is what a VAD and a speech-quality
model key on; documented here because it is the one input that is not a recording.
"""

from __future__ import annotations

import codecs
import contextlib
import io

import numpy as np

__all__ = ["face_crops", "imagenet_batch", "photo_crops", "rendered_lines", "sentences", "speech_like", "text_pages"]

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
# RGB photos bundled in the scikit-image wheel (the others need a download through pooch)
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "cat", "immunohistochemistry", "hubble_deep_field", "retina",
          "colorwheel", "camera", "coins", "clock", "moon", "page", "text", "grass", "brick")
ASTRONAUT_FACE = (175, 75, 105)  # (x, y, side) of the face box in skimage.data.astronaut()


def _photo(name: str) -> np.ndarray:
    import skimage.data

    img = getattr(skimage.data, name)()
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return np.ascontiguousarray(img[..., :3])


def _resize(img: np.ndarray, h: int, w: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(img).resize((w, h), Image.BILINEAR))


def photo_crops(n: int, h: int, w: int, *, seed: int = 0, names: tuple[str, ...] = PHOTOS) -> np.ndarray:
    """``n`` random crops (30-100 % of the shorter side, random flips) of the bundled photos, as uint8 [n, h, w, 3]."""
    rng = np.random.default_rng(seed)
    photos = [_photo(p) for p in names]
    out = np.empty((n, h, w, 3), np.uint8)
    for i in range(n):
        img = photos[i % len(photos)]
        side = int(min(img.shape[:2]) * rng.uniform(0.3, 1.0))
        ch, cw = side, min(img.shape[1], int(side * w / h))
        y, x = rng.integers(0, img.shape[0] - ch + 1), rng.integers(0, img.shape[1] - cw + 1)
        crop = _resize(img[y : y + ch, x : x + cw], h, w)
        out[i] = crop[:, ::-1] if rng.random() < 0.5 else crop
    return out


def imagenet_batch(n: int, *, size: int = 224, seed: int = 0) -> np.ndarray:
    """Photo crops normalized as torchvision's ImageNet models expect: float32 NCHW."""
    x = photo_crops(n, size, size, seed=seed).astype(np.float32) / 255
    return np.ascontiguousarray(((x - IMAGENET_MEAN) / IMAGENET_STD).transpose(0, 3, 1, 2))


def face_crops(n: int, *, size: int = 48, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Half jittered crops of the astronaut's face (label 1), half crops of faceless photos (label 0): uint8, labels."""
    rng = np.random.default_rng(seed)
    face = _photo("astronaut")
    x0, y0, side = ASTRONAUT_FACE
    crops, labels = [], []
    others = photo_crops(n - n // 2, size, size, seed=seed + 1, names=("coffee", "rocket", "brick", "grass", "coins", "page"))
    for _ in range(n // 2):
        s = int(side * rng.uniform(0.9, 1.1))
        x, y = x0 + int(rng.integers(-6, 7)), y0 + int(rng.integers(-6, 7))
        crops.append(_resize(face[y : y + s, x : x + s], size, size))
        labels.append(1)
    crops += list(others)
    labels += [0] * len(others)
    return np.stack(crops), np.array(labels, np.int64)


def sentences() -> list[str]:
    """The nineteen aphorisms of the Zen of Python: real English sentences, shipped with every interpreter."""
    with contextlib.redirect_stdout(io.StringIO()):  # importing `this` prints the poem
        import this

    return [s.strip() for s in codecs.decode(this.s, "rot13").splitlines()[2:] if s.strip()]


def rendered_lines(h: int, w: int, *, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """Each sentence rendered as a dark-on-light text line (Pillow's bundled font), uint8 [n, h, w, 3], and the texts."""
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    texts = sentences()
    font = ImageFont.load_default(size=int(h * 0.6))
    out = np.empty((len(texts), h, w, 3), np.uint8)
    for i, t in enumerate(texts):
        words = t.split()[:4]  # a line a recognizer sees: a few words, then resized to the model's width
        line = " ".join(words)
        width = int(font.getlength(line)) + 16
        bg, fg = int(rng.integers(200, 256)), int(rng.integers(0, 60))
        img = Image.new("RGB", (max(width, w // 2), h), (bg, bg, bg))
        ImageDraw.Draw(img).text((8, h * 0.15), line, fill=(fg, fg, fg), font=font)
        img = img.resize((w, h), Image.BILINEAR) if img.width > w else img
        canvas = Image.new("RGB", (w, h), (bg, bg, bg))
        canvas.paste(img, (0, 0))
        out[i] = np.asarray(canvas)
        texts[i] = line
    return out, texts


def text_pages(n: int, h: int, w: int, *, seed: int = 0) -> np.ndarray:
    """Document-like images for a text detector: scikit-image's scanned page and text, rendered paragraphs, photos."""
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    scans = photo_crops(n // 3, h, w, seed=seed, names=("page", "text"))
    photos = photo_crops(n // 3, h, w, seed=seed + 1)
    font = ImageFont.load_default(size=18)
    lines = sentences()
    pages = []
    for k in range(n - len(scans) - len(photos)):
        img = Image.new("RGB", (w, h), (255, 255, 250))
        draw = ImageDraw.Draw(img)
        for j, y in enumerate(range(10, h - 20, 26)):
            draw.text((int(rng.integers(5, 30)), y), lines[(k * 7 + j) % len(lines)], fill=(20, 20, 20), font=font)
        pages.append(np.asarray(img))
    return np.concatenate([scans, photos, np.stack(pages)])


def _resonate(x: np.ndarray, freq: float, bw: float, sr: int) -> np.ndarray:
    from scipy.signal import lfilter

    r = np.exp(-np.pi * bw / sr)
    a = [1.0, -2 * r * np.cos(2 * np.pi * freq / sr), r * r]
    return lfilter([1 - r], a, x)


# (F1, F2, F3) in Hz of a few vowels (Peterson & Barney averages)
VOWELS = ((730, 1090, 2440), (270, 2290, 3010), (530, 1840, 2480), (570, 840, 2410), (300, 870, 2240), (660, 1720, 2410))


def speech_like(seconds: float, *, sr: int = 16000, seed: int = 0, snr_db: float = 40.0) -> np.ndarray:
    """Synthetic speech: words of 1-4 syllables (voiced vowel, fricative onset) separated by pauses, in white noise.

    float32 in [-1, 1]; ``snr_db`` sets the background noise under the speech (a speech-quality model hears it).
    """
    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    speech = np.zeros(n)
    t = int(rng.uniform(0.2, 0.5) * sr)
    while t < n - sr // 4:
        for _ in range(int(rng.integers(1, 5))):
            dur = int(rng.uniform(0.12, 0.26) * sr)
            f0 = rng.uniform(100, 220) * (1 + 0.1 * np.sin(np.linspace(0, np.pi, dur)))
            phase = np.cumsum(f0 / sr)
            pulses = np.diff(np.floor(phase), prepend=0.0) * (1 + 0.05 * rng.standard_normal(dur))
            f1, f2, f3 = VOWELS[int(rng.integers(len(VOWELS)))]
            voiced = sum(g * _resonate(pulses, f, bw, sr) for f, bw, g in ((f1, 80, 1.0), (f2, 100, 0.5), (f3, 150, 0.25)))
            env = np.sin(np.linspace(0, np.pi, dur)) ** 0.5
            syl = voiced * env
            burst = int(0.04 * sr)
            syl[:burst] += 0.3 * rng.standard_normal(burst) * np.linspace(1, 0, burst) * np.abs(voiced).max()
            end = min(n, t + dur)
            if end <= t:
                break
            speech[t:end] += syl[: end - t]
            t = end + int(rng.uniform(0.01, 0.06) * sr)
        t += int(rng.uniform(0.15, 0.8) * sr)  # a pause between words
    speech /= np.abs(speech).max() + 1e-9
    noise = rng.standard_normal(n) * np.sqrt(np.mean(speech**2) / 10 ** (snr_db / 10))
    x = 0.5 * (speech + noise)
    return (x / max(1.0, np.abs(x).max())).astype(np.float32)
