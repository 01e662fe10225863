// fhirpanel dashboard: the overview's panel chart (Chart.js, vendored in chart.umd.js).
// The figures come from a JSON block the server rendered; the table below the chart holds the
// same numbers for screen readers and for printing.
(function () {
  "use strict";
  var source = document.getElementById("panel-data");
  var canvas = document.getElementById("panel-chart");
  if (!source || !canvas || typeof Chart === "undefined") {
    return;
  }
  var data = JSON.parse(source.textContent);
  var zoom = document.getElementById("zoom-panels");

  var chart = new Chart(canvas, {
    type: "bar",
    data: {
      labels: data.labels,
      datasets: [
        { label: "Panel size", data: data.size, backgroundColor: "#1d4f91", order: 1 },
        { label: "Risk-adjusted size", data: data.risk_adjusted, backgroundColor: "#d46a2a",
          order: 1 },
        // Capacity is the track the two bars fill: drawn behind them, not beside them.
        { label: "Capacity", data: data.capacity, backgroundColor: "#dde2e9",
          borderColor: "#8b96a5", borderWidth: 1, grouped: false, order: 2,
          barPercentage: 1.0, categoryPercentage: 0.9 }
      ]
    },
    options: {
      indexAxis: "y",
      responsive: true,
      maintainAspectRatio: false,
      animation: false,
      scales: {
        x: { beginAtZero: true, title: { display: true, text: "Patients" } },
        y: { ticks: { autoSkip: false } }
      },
      plugins: {
        legend: { position: "top" },
        tooltip: {
          callbacks: {
            footer: function (items) {
              var i = items[0].dataIndex;
              return "Capacity used: " + data.used_pct[i] + "% · Unconfirmed: " + data.unconfirmed[i];
            }
          }
        }
      },
      onClick: function (_event, elements) {
        if (elements.length) {
          window.location.href = data.links[elements[0].index];
        }
      },
      onHover: function (event, elements) {
        event.native.target.style.cursor = elements.length ? "pointer" : "default";
      }
    }
  });

  function applyZoom() {
    // Hiding the capacity bars lets the axis fit the panels when they are far below capacity.
    chart.setDatasetVisibility(2, !zoom.checked);
    chart.update();
  }
  if (zoom) {
    zoom.addEventListener("change", applyZoom);
  }
  window.fhirpanelChart = chart;
})();
