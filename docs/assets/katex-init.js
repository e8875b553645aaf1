// Typeset the math that pymdownx.arithmatex (generic mode) marked: \( \) inline, \[ \] display.
// The page loads without instant navigation, so once, when the document is parsed.
document.addEventListener("DOMContentLoaded", function () {
  document.querySelectorAll(".arithmatex").forEach(function (el) {
    renderMathInElement(el, {
      delimiters: [
        { left: "\\(", right: "\\)", display: false },
        { left: "\\[", right: "\\]", display: true },
      ],
      throwOnError: true,
    });
  });
});
