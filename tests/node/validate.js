// Reads one FHIR JSON resource per line on stdin and answers one JSON line per resource on
// stdout: {"valid": true|false, "errors": [...]} from FHIR.js's R4 validator (errors only:
// its warnings are about extra properties, which fhirclient's strict parse already checks).
"use strict";
const readline = require("readline");
const { Fhir } = require("fhir");

const fhir = new Fhir();
const lines = readline.createInterface({ input: process.stdin, terminal: false });
lines.on("line", (line) => {
  let answer;
  try {
    const result = fhir.validate(JSON.parse(line));
    const errors = result.messages
      .filter((m) => m.severity === "error")
      .map((m) => `${m.location}: ${m.message}`);
    answer = { valid: result.valid, errors };
  } catch (exc) {
    answer = { valid: false, errors: [`validator failed: ${exc.message}`] };
  }
  process.stdout.write(JSON.stringify(answer) + "\n");
});
