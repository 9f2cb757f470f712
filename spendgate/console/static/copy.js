// "Copy" buttons: <button data-copy="ID"> copies the value of the element with that id
// to the clipboard and says so in #copied (a live region).
(function () {
  "use strict";
  document.querySelectorAll("button[data-copy]").forEach(function (button) {
    button.addEventListener("click", function () {
      var field = document.getElementById(button.getAttribute("data-copy"));
      var status = document.getElementById("copied");
      function said(text) { if (status) status.textContent = text; }
      field.select();
      if (navigator.clipboard && navigator.clipboard.writeText) {
        navigator.clipboard.writeText(field.value).then(
          function () { said("Copied."); },
          function () { said("Select the text and copy it (Ctrl+C)."); }
        );
      } else {
        said(document.execCommand("copy") ? "Copied." : "Select the text and copy it (Ctrl+C).");
      }
    });
  });
})();
