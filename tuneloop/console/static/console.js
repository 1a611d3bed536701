// Forms that change state ask first: <form data-confirm="...">. A refusal comes back as a page with the reason.
document.addEventListener("submit", function (event) {
  var form = event.target;
  var question = form.getAttribute("data-confirm");
  if (question && !window.confirm(question)) {
    event.preventDefault();
  }
});
