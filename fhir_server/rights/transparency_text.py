"""The transparency page's words, in French and English."""

from __future__ import annotations

TEXT: dict[str, dict[str, str]] = {
    "en": {
        "title": "Transparency: what this health data warehouse holds and who uses it",
        "intro": "Patients' data from care (hospitals, practices, devices) are kept here "
                 "and given, pseudonymized, to the research projects listed below. Every "
                 "patient may object to the research use of their data at any time.",
        "generated": "Figures computed on",
        "small_cells": "Counts from 1 to 10 are not shown (<11), so that no one can be "
                       "singled out.",
        "holdings": "What the warehouse holds, by source and by month of last update",
        "patients": "Patients", "resources": "Resources", "source": "Source",
        "month": "Month", "unspecified": "(source not stated)",
        "recipients": "Research recipients and what each receives",
        "recipient": "Recipient", "rules": "De-identification rules",
        "date_shift": "Date shift (at most)", "days": "days", "types": "Resource types",
        "no_recipients": "No research recipient is configured.",
        "objections": "Objections to research use",
        "in_force": "Objections in force", "withdrawn": "Objections withdrawn",
        "how_to_object": "To object, ask your care team or the warehouse's data protection "
                         "officer: from the moment it is recorded, nothing of yours goes "
                         "to research.",
        "exports": "Last exports to research", "date": "Date", "size": "Size",
        "bytes": "bytes", "manifest": "Manifest (SHA-256)",
        "no_exports": "No export yet.",
    },
    "fr": {
        "title": "Transparence : ce que cet entrepôt de données de santé contient et qui "
                 "l'utilise",
        "intro": "Les données des patients issues du soin (hôpitaux, cabinets, dispositifs) "
                 "sont conservées ici et transmises, pseudonymisées, aux projets de "
                 "recherche ci-dessous. Chaque patient peut s'opposer à tout moment à "
                 "l'usage de ses données pour la recherche.",
        "generated": "Chiffres calculés le",
        "small_cells": "Les effectifs de 1 à 10 ne sont pas affichés (<11), afin que "
                       "personne ne puisse être identifié.",
        "holdings": "Ce que l'entrepôt contient, par source et par mois de dernière mise "
                    "à jour",
        "patients": "Patients", "resources": "Ressources", "source": "Source",
        "month": "Mois", "unspecified": "(source non précisée)",
        "recipients": "Destinataires de recherche et ce que chacun reçoit",
        "recipient": "Destinataire", "rules": "Règles de dé-identification",
        "date_shift": "Décalage des dates (au plus)", "days": "jours",
        "types": "Types de ressources",
        "no_recipients": "Aucun destinataire de recherche n'est configuré.",
        "objections": "Oppositions à l'usage pour la recherche",
        "in_force": "Oppositions en vigueur", "withdrawn": "Oppositions retirées",
        "how_to_object": "Pour vous opposer, adressez-vous à votre équipe de soin ou au "
                         "délégué à la protection des données de l'entrepôt : dès son "
                         "enregistrement, rien de vous ne part vers la recherche.",
        "exports": "Dernières extractions pour la recherche", "date": "Date",
        "size": "Taille", "bytes": "octets", "manifest": "Manifeste (SHA-256)",
        "no_exports": "Aucune extraction pour l'instant.",
    },
}
