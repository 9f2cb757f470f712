// Sortable tables: every <th data-sort> of a table.sortable gets a button; a click sorts
// the body rows by that column (numbers by data-value) and says so in aria-sort.
(function () {
  "use strict";
  function cellValue(row, index, kind) {
    var cell = row.children[index];
    if (!cell) return "";
    var raw = cell.getAttribute("data-value");
    if (raw === null) raw = cell.textContent.trim();
    return kind === "number" ? parseFloat(raw) || 0 : raw.toLowerCase();
  }
  function setup(table) {
    if (table.getAttribute("data-sortable-ready")) return;
    table.setAttribute("data-sortable-ready", "1");
    var heads = table.querySelectorAll("thead th[data-sort]");
    heads.forEach(function (th) {
      var button = document.createElement("button");
      button.type = "button";
      button.className = "sort";
      button.textContent = th.textContent;
      th.textContent = "";
      th.appendChild(button);
      button.addEventListener("click", function () {
        var index = Array.prototype.indexOf.call(th.parentNode.children, th);
        var kind = th.getAttribute("data-sort");
        var ascending = th.getAttribute("aria-sort") !== "ascending";
        heads.forEach(function (other) { other.removeAttribute("aria-sort"); });
        th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) {
          var x = cellValue(a, index, kind), y = cellValue(b, index, kind);
          return (x < y ? -1 : x > y ? 1 : 0) * (ascending ? 1 : -1);
        });
        rows.forEach(function (row) { body.appendChild(row); });
      });
    });
  }
  function setupAll() { document.querySelectorAll("table.sortable").forEach(setup); }
  setupAll();
  // htmx swaps a page's content in place (hx-boost): set up the tables it brought
  document.body.addEventListener("htmx:afterSettle", setupAll);
})();

// A table wider than the page scrolls inside its .table-wrap: that wrap is then a region
// named after the table, reachable with Tab so the keyboard can scroll it too.
(function () {
  "use strict";
  function tableName(table) {
    if (table.caption) return table.caption.textContent.trim();
    var by = table.getAttribute("aria-labelledby");
    var named = by && document.getElementById(by);
    return named ? named.textContent.trim() : table.getAttribute("aria-label") || "table";
  }
  function mark() {
    document.querySelectorAll(".table-wrap").forEach(function (wrap) {
      var table = wrap.querySelector("table");
      if (table && wrap.scrollWidth > wrap.clientWidth + 1) {
        wrap.setAttribute("tabindex", "0");
        wrap.setAttribute("role", "region");
        wrap.setAttribute("aria-label", tableName(table) + " (scrolls sideways)");
      } else {
        ["tabindex", "role", "aria-label"].forEach(function (a) { wrap.removeAttribute(a); });
      }
    });
  }
  mark();
  window.addEventListener("resize", mark);
  document.body.addEventListener("htmx:afterSettle", mark);
})();
