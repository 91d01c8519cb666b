// Calibration page: thumbnails drawn from the embedded image table (each image stored once);
// click one to see its larger copy, click or Escape to close.
(function () {
  "use strict";
  const images = JSON.parse(document.getElementById("report-data").textContent).images;
  const box = document.getElementById("lightbox");
  const big = document.getElementById("lightbox-img");
  const caption = document.getElementById("lightbox-caption");
  document.querySelectorAll("img[data-img]").forEach((thumb) => {
    const entry = images[Number(thumb.dataset.img)];
    thumb.src = entry[0];
    thumb.addEventListener("click", () => {
      big.src = entry[1] || entry[0];
      caption.textContent = thumb.alt;
      box.hidden = false;
    });
  });
  box.addEventListener("click", () => { box.hidden = true; });
  document.addEventListener("keydown", (ev) => { if (ev.key === "Escape") box.hidden = true; });
})();
