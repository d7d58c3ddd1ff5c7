"""French demographics for synthetic patients: names, addresses, places of birth, INS.

Every place is real (département code, postal code and town agree), every person is not.
Départements are weighted by population (INSEE 2021 figures, in thousands, rounded) times a
diabetes prevalence factor (treated diabetes is about twice as frequent in La Réunion and
the Antilles and higher in Seine-Saint-Denis and Hauts-de-France than the national 5.3 %,
lower in Brittany and Paris: Santé publique France, "Le diabète en France", 2020 data).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import date
from typing import Final


@dataclass(frozen=True, slots=True)
class Departement:
    code: str  # "13", "2A", "974"
    name: str
    weight: float  # population (thousands) x diabetes prevalence factor
    towns: tuple[tuple[str, str], ...]  # (postal code, town)


def _dep(code: str, name: str, population: int, prevalence: float, *towns: str) -> Departement:
    pairs = tuple((t.split(" ", 1)[0], t.split(" ", 1)[1]) for t in towns)
    return Departement(code, name, population * prevalence, pairs)


DEPARTEMENTS: Final[tuple[Departement, ...]] = (
    _dep("01", "Ain", 650, 0.9, "01000 Bourg-en-Bresse", "01100 Oyonnax"),
    _dep("02", "Aisne", 530, 1.2, "02100 Saint-Quentin", "02200 Soissons", "02000 Laon"),
    _dep("06", "Alpes-Maritimes", 1100, 1.0, "06000 Nice", "06400 Cannes", "06600 Antibes"),
    _dep("08", "Ardennes", 270, 1.2, "08000 Charleville-Mézières"),
    _dep("10", "Aube", 310, 1.1, "10000 Troyes"),
    _dep("13", "Bouches-du-Rhône", 2040, 1.1, "13005 Marseille", "13013 Marseille",
         "13100 Aix-en-Provence", "13200 Arles", "13500 Martigues", "13400 Aubagne"),
    _dep("14", "Calvados", 695, 0.9, "14000 Caen", "14100 Lisieux", "14400 Bayeux"),
    _dep("17", "Charente-Maritime", 650, 0.9, "17000 La Rochelle", "17300 Rochefort"),
    _dep("18", "Cher", 300, 1.0, "18000 Bourges"),
    _dep("19", "Corrèze", 240, 0.9, "19100 Brive-la-Gaillarde", "19000 Tulle"),
    _dep("2A", "Corse-du-Sud", 160, 1.0, "20000 Ajaccio", "20137 Porto-Vecchio"),
    _dep("2B", "Haute-Corse", 180, 1.0, "20200 Bastia", "20250 Corte"),
    _dep("21", "Côte-d'Or", 535, 0.9, "21000 Dijon", "21200 Beaune"),
    _dep("22", "Côtes-d'Armor", 600, 0.8, "22000 Saint-Brieuc"),
    _dep("24", "Dordogne", 410, 1.0, "24000 Périgueux", "24100 Bergerac"),
    _dep("25", "Doubs", 540, 0.9, "25000 Besançon", "25200 Montbéliard"),
    _dep("26", "Drôme", 510, 0.9, "26000 Valence"),
    _dep("29", "Finistère", 915, 0.8, "29200 Brest", "29000 Quimper", "29600 Morlaix"),
    _dep("30", "Gard", 750, 1.1, "30000 Nîmes", "30100 Alès"),
    _dep("31", "Haute-Garonne", 1430, 0.9, "31000 Toulouse", "31770 Colomiers", "31600 Muret"),
    _dep("33", "Gironde", 1650, 0.9, "33000 Bordeaux", "33700 Mérignac", "33600 Pessac",
         "33500 Libourne"),
    _dep("34", "Hérault", 1180, 1.0, "34000 Montpellier", "34500 Béziers", "34200 Sète"),
    _dep("35", "Ille-et-Vilaine", 1080, 0.8, "35000 Rennes", "35400 Saint-Malo",
         "35300 Fougères"),
    _dep("37", "Indre-et-Loire", 610, 0.9, "37000 Tours", "37400 Amboise"),
    _dep("38", "Isère", 1270, 0.9, "38000 Grenoble", "38200 Vienne", "38500 Voiron"),
    _dep("40", "Landes", 410, 0.9, "40000 Mont-de-Marsan", "40100 Dax"),
    _dep("42", "Loire", 765, 1.0, "42000 Saint-Étienne", "42300 Roanne"),
    _dep("44", "Loire-Atlantique", 1430, 0.8, "44000 Nantes", "44600 Saint-Nazaire",
         "44400 Rezé"),
    _dep("45", "Loiret", 680, 1.0, "45000 Orléans", "45200 Montargis"),
    _dep("49", "Maine-et-Loire", 820, 0.8, "49000 Angers", "49300 Cholet", "49400 Saumur"),
    _dep("51", "Marne", 565, 1.1, "51100 Reims", "51000 Châlons-en-Champagne",
         "51200 Épernay"),
    _dep("54", "Meurthe-et-Moselle", 730, 1.1, "54000 Nancy", "54300 Lunéville"),
    _dep("56", "Morbihan", 760, 0.8, "56000 Vannes", "56100 Lorient"),
    _dep("57", "Moselle", 1040, 1.2, "57000 Metz", "57100 Thionville", "57600 Forbach"),
    _dep("59", "Nord", 2600, 1.2, "59000 Lille", "59100 Roubaix", "59200 Tourcoing",
         "59140 Dunkerque", "59300 Valenciennes", "59500 Douai"),
    _dep("60", "Oise", 830, 1.2, "60000 Beauvais", "60200 Compiègne", "60100 Creil"),
    _dep("62", "Pas-de-Calais", 1460, 1.2, "62000 Arras", "62100 Calais", "62300 Lens",
         "62200 Boulogne-sur-Mer", "62400 Béthune"),
    _dep("63", "Puy-de-Dôme", 660, 0.9, "63000 Clermont-Ferrand", "63200 Riom"),
    _dep("64", "Pyrénées-Atlantiques", 680, 0.8, "64000 Pau", "64100 Bayonne",
         "64200 Biarritz"),
    _dep("66", "Pyrénées-Orientales", 480, 1.1, "66000 Perpignan"),
    _dep("67", "Bas-Rhin", 1140, 1.0, "67000 Strasbourg", "67500 Haguenau", "67600 Sélestat"),
    _dep("68", "Haut-Rhin", 770, 1.1, "68100 Mulhouse", "68000 Colmar"),
    _dep("69", "Rhône", 1880, 0.9, "69003 Lyon", "69008 Lyon", "69100 Villeurbanne",
         "69200 Vénissieux"),
    _dep("72", "Sarthe", 565, 1.0, "72000 Le Mans"),
    _dep("73", "Savoie", 435, 0.8, "73000 Chambéry"),
    _dep("74", "Haute-Savoie", 830, 0.8, "74000 Annecy", "74200 Thonon-les-Bains"),
    _dep("75", "Paris", 2130, 0.8, "75011 Paris", "75013 Paris", "75015 Paris",
         "75018 Paris", "75020 Paris"),
    _dep("76", "Seine-Maritime", 1250, 1.0, "76000 Rouen", "76600 Le Havre", "76200 Dieppe"),
    _dep("77", "Seine-et-Marne", 1420, 1.1, "77100 Meaux", "77000 Melun", "77500 Chelles"),
    _dep("78", "Yvelines", 1450, 0.9, "78000 Versailles", "78300 Poissy",
         "78200 Mantes-la-Jolie"),
    _dep("80", "Somme", 570, 1.1, "80000 Amiens", "80100 Abbeville"),
    _dep("81", "Tarn", 390, 0.9, "81000 Albi", "81100 Castres"),
    _dep("83", "Var", 1080, 1.0, "83000 Toulon", "83400 Hyères", "83600 Fréjus",
         "83300 Draguignan"),
    _dep("84", "Vaucluse", 560, 1.1, "84000 Avignon", "84200 Carpentras", "84100 Orange"),
    _dep("85", "Vendée", 690, 0.8, "85000 La Roche-sur-Yon"),
    _dep("86", "Vienne", 440, 0.9, "86000 Poitiers", "86100 Châtellerault"),
    _dep("87", "Haute-Vienne", 375, 0.9, "87000 Limoges"),
    _dep("91", "Essonne", 1300, 1.1, "91000 Évry-Courcouronnes", "91100 Corbeil-Essonnes",
         "91300 Massy"),
    _dep("92", "Hauts-de-Seine", 1630, 0.8, "92000 Nanterre", "92100 Boulogne-Billancourt",
         "92700 Colombes", "92400 Courbevoie"),
    _dep("93", "Seine-Saint-Denis", 1660, 1.4, "93200 Saint-Denis", "93100 Montreuil",
         "93300 Aubervilliers", "93000 Bobigny"),
    _dep("94", "Val-de-Marne", 1410, 1.1, "94000 Créteil", "94400 Vitry-sur-Seine",
         "94500 Champigny-sur-Marne"),
    _dep("95", "Val-d'Oise", 1250, 1.2, "95000 Cergy", "95100 Argenteuil", "95200 Sarcelles"),
    _dep("971", "Guadeloupe", 385, 1.8, "97110 Pointe-à-Pitre", "97139 Les Abymes",
         "97100 Basse-Terre"),
    _dep("972", "Martinique", 360, 1.6, "97200 Fort-de-France", "97232 Le Lamentin"),
    _dep("973", "Guyane", 285, 1.4, "97300 Cayenne"),
    _dep("974", "La Réunion", 870, 1.9, "97400 Saint-Denis", "97410 Saint-Pierre",
         "97430 Le Tampon"),
)

DEPARTEMENT_BY_CODE: Final = {d.code: d for d in DEPARTEMENTS}
_DEP_WEIGHTS: Final = [d.weight for d in DEPARTEMENTS]


def departement_of_postal_code(postal_code: str) -> str:
    """The département a postal code belongs to (Corsica's 20xxx split at 20200)."""
    if postal_code.startswith("97"):
        return postal_code[:3]
    if postal_code.startswith("20"):
        return "2A" if int(postal_code) < 20200 else "2B"
    return postal_code[:2]


# --- names --------------------------------------------------------------------------------
# Most given names of each birth era, from the INSEE "fichier des prénoms" top lists.
_GIVEN: Final[dict[tuple[str, int], tuple[str, ...]]] = {
    ("male", 1955): ("Jean", "Michel", "Pierre", "André", "Jacques", "Bernard", "René",
                     "Claude", "Gérard", "Marcel", "Roger", "Robert", "Daniel", "Henri",
                     "Raymond", "Guy", "Georges", "Louis", "Maurice", "Jean-Pierre",
                     "Jean-Claude", "Jean-Louis", "Gilbert", "Roland"),
    ("male", 1975): ("Philippe", "Alain", "Patrick", "Christian", "Éric", "Thierry", "Pascal",
                     "Didier", "Dominique", "Laurent", "Frédéric", "Stéphane", "Olivier",
                     "Bruno", "Jean-Marc", "Hervé", "Gilles", "Denis", "François", "Jérôme",
                     "Yves", "Serge"),
    ("male", 1995): ("Nicolas", "Sébastien", "Julien", "Jérôme", "Christophe", "David",
                     "Guillaume", "Mathieu", "Romain", "Cédric", "Anthony", "Kévin", "Maxime",
                     "Thomas", "Alexandre", "Benoît", "Grégory", "Jérémy", "Mickaël",
                     "Florian", "Aurélien"),
    ("male", 9999): ("Lucas", "Hugo", "Théo", "Enzo", "Nathan", "Mathéo", "Louis", "Léo",
                     "Raphaël", "Gabriel", "Noé", "Maël", "Clément", "Quentin", "Antoine",
                     "Baptiste", "Valentin", "Arthur", "Jules", "Adam", "Timothée"),
    ("female", 1955): ("Marie", "Jeanne", "Monique", "Françoise", "Jacqueline", "Simone",
                       "Denise", "Yvette", "Paulette", "Odette", "Colette", "Ginette",
                       "Madeleine", "Germaine", "Suzanne", "Josette", "Andrée", "Geneviève",
                       "Thérèse", "Hélène", "Nicole", "Renée"),
    ("female", 1975): ("Martine", "Christine", "Catherine", "Sylvie", "Isabelle", "Nathalie",
                       "Brigitte", "Dominique", "Véronique", "Chantal", "Patricia",
                       "Françoise", "Danièle", "Évelyne", "Béatrice", "Corinne", "Pascale",
                       "Valérie", "Hélène", "Agnès", "Josiane", "Mireille"),
    ("female", 1995): ("Céline", "Aurélie", "Émilie", "Stéphanie", "Sandrine", "Julie",
                       "Virginie", "Audrey", "Élodie", "Caroline", "Mélanie", "Laetitia",
                       "Sophie", "Amélie", "Marion", "Anaïs", "Camille", "Sarah", "Laura"),
    ("female", 9999): ("Léa", "Manon", "Chloé", "Emma", "Inès", "Camille", "Jade", "Louise",
                       "Zoé", "Lina", "Clémence", "Océane", "Maëlle", "Lou", "Alice",
                       "Juliette", "Mathilde", "Éloïse"),
}

_SURNAMES: Final = (
    "Martin", "Bernard", "Thomas", "Petit", "Robert", "Richard", "Durand", "Dubois", "Moreau",
    "Laurent", "Simon", "Michel", "Lefèvre", "Leroy", "Roux", "David", "Bertrand", "Morel",
    "Fournier", "Girard", "Bonnet", "Dupont", "Lambert", "Fontaine", "Rousseau", "Vincent",
    "Lefebvre", "Faure", "André", "Mercier", "Blanc", "Guérin", "Boyer", "Garnier",
    "Chevalier", "François", "Legrand", "Gauthier", "Garcia", "Perrin", "Robin", "Clément",
    "Morin", "Nicolas", "Henry", "Roussel", "Mathieu", "Masson", "Marchand", "Duval", "Denis",
    "Dumont", "Lemaire", "Noël", "Dufour", "Meunier", "Brun", "Blanchard", "Giraud", "Joly",
    "Rivière", "Lucas", "Brunet", "Gaillard", "Barbier", "Arnaud", "Bénard", "Hébert",
    "Ménard", "Prévost", "Lemoine", "Régnier", "Lebœuf", "Carré", "Caron", "Lacroix",
    "Leclerc", "Aubert", "Benoît", "Mallet", "Després", "Thébault",
)

# Regions with their own frequent surnames (INSEE/Geopatronyme regional tops).
_REGIONAL_SURNAMES: Final[dict[str, tuple[str, ...]]] = {
    "brittany": ("Le Gall", "Le Goff", "Le Roux", "Guégan", "Le Bihan", "Tanguy", "Le Floch"),
    "alsace": ("Muller", "Schmitt", "Meyer", "Weber", "Klein", "Schneider", "Fischer"),
    "corsica": ("Santoni", "Casanova", "Leca", "Luciani", "Orsini", "Pietri"),
    "reunion": ("Payet", "Hoarau", "Grondin", "Técher", "Fontaine", "Rivière", "Lebon"),
    "antilles": ("Jean-Baptiste", "Alexis", "Édouard", "Bellay", "Jean-Louis", "Pierre"),
}
_REGION_OF_DEP: Final = {
    "22": "brittany", "29": "brittany", "35": "brittany", "56": "brittany",
    "67": "alsace", "68": "alsace", "2A": "corsica", "2B": "corsica",
    "974": "reunion", "971": "antilles", "972": "antilles", "973": "antilles",
}

# People born abroad: INSEE country code (for the NIR), given names by sex, surnames.
_ABROAD: Final[tuple[tuple[str, float, tuple[str, ...], tuple[str, ...], tuple[str, ...]], ...]]
_ABROAD = (
    ("352", 30, ("Mohamed", "Ahmed", "Ali", "Rachid", "Saïd", "Mustapha"),
     ("Fatima", "Khadija", "Malika", "Zohra", "Aïcha", "Samira"),
     ("Benali", "Haddad", "Belkacem", "Mansouri", "Cherif", "Brahimi")),  # Algérie
    ("350", 25, ("Mohamed", "Abdelkader", "Hassan", "Karim", "Youssef"),
     ("Fatima", "Khadija", "Naïma", "Rachida", "Latifa"),
     ("Amrani", "El Idrissi", "Benjelloun", "Alaoui", "Tazi")),  # Maroc
    ("351", 10, ("Mohamed", "Hédi", "Mongi", "Béchir"), ("Fatma", "Saïda", "Leïla", "Nadia"),
     ("Trabelsi", "Ben Ammar", "Gharbi", "Jlassi")),  # Tunisie
    ("139", 15, ("Manuel", "José", "António", "Joaquim", "Fernando"),
     ("Maria", "Rosa", "Fernanda", "Conceição", "Lurdes"),
     ("Da Silva", "Dos Santos", "Pereira", "Ferreira", "Rodrigues", "Fernandes")),  # Portugal
    ("127", 8, ("Giuseppe", "Antonio", "Giovanni", "Salvatore"),
     ("Maria", "Giuseppina", "Anna", "Rosa"), ("Rossi", "Russo", "Ferrari", "Esposito")),
    ("134", 6, ("José", "Antonio", "Manuel", "Francisco"), ("María", "Carmen", "Dolores"),
     ("García", "Martínez", "López", "Sánchez", "Fernández")),  # Espagne
    ("208", 6, ("Mehmet", "Mustafa", "Ahmet", "Ali"), ("Fatma", "Ayşe", "Emine", "Hatice"),
     ("Yılmaz", "Kaya", "Demir", "Şahin", "Çelik")),  # Turquie
)
_ABROAD_WEIGHTS: Final = [a[1] for a in _ABROAD]
SHARE_BORN_ABROAD: Final = 0.12  # INSEE: about 12-13 % of residents were born abroad

_STREETS: Final = (
    "rue de la République", "avenue Jean Jaurès", "place de l'Église", "boulevard Victor Hugo",
    "rue Pasteur", "chemin des Vignes", "allée des Tilleuls", "impasse des Érables",
    "rue du Général de Gaulle", "avenue de la Libération", "rue des Écoles", "rue Émile Zola",
    "rue de la Gare", "place du Marché", "rue Saint-Honoré", "cours Gambetta",
    "rue du Château", "avenue des Frênes", "rue Molière", "quai de la Loire",
)


@dataclass(frozen=True, slots=True)
class Identity:
    family: str
    given: tuple[str, ...]
    line: str
    postal_code: str
    city: str
    departement: Departement
    ins: str  # 13-digit NIR + 2-digit key


def _given_names(rng: random.Random, sex: str, birth_year: int) -> tuple[str, ...]:
    era = next(e for e in (1955, 1975, 1995, 9999) if birth_year <= e)
    pool = _GIVEN[(sex, era)]
    first = rng.choice(pool)
    if rng.random() < 0.3:  # a second given name, as on a French identity document
        second = rng.choice(pool)
        if second != first:
            return (first, second)
    return (first,)


def ins_key(nir13: str) -> str:
    """The 2-digit control key of a NIR: 97 - (NIR mod 97)."""
    return f"{97 - int(nir13) % 97:02d}"


def make_identity(rng: random.Random, sex: str, birth: date) -> Identity:
    dep = rng.choices(DEPARTEMENTS, weights=_DEP_WEIGHTS)[0]
    postal_code, city = rng.choice(dep.towns)
    line = f"{rng.randint(1, 150)} {rng.choice(_STREETS)}"
    sex_digit = "1" if sex == "male" else "2"
    prefix = f"{sex_digit}{birth.year % 100:02d}{birth.month:02d}"
    if rng.random() < SHARE_BORN_ABROAD:
        country, _w, men, women, surnames = rng.choices(_ABROAD, weights=_ABROAD_WEIGHTS)[0]
        family = rng.choice(surnames)
        given: tuple[str, ...] = (rng.choice(men if sex == "male" else women),)
        place = f"99{country}"
    else:
        region = _REGION_OF_DEP.get(dep.code)
        pool = _REGIONAL_SURNAMES[region] if region and rng.random() < 0.5 else _SURNAMES
        family = rng.choice(pool)
        given = _given_names(rng, sex, birth.year)
        # Mostly born in the département they live in; Corsican NIRs hold letters (2A/2B),
        # which the 13+2 digit INS format excludes, so those are born on the mainland.
        birth_dep = dep.code if rng.random() < 0.6 else rng.choice(DEPARTEMENTS).code
        if birth_dep in ("2A", "2B"):
            birth_dep = "13"
        # Overseas départements have 3-digit codes and 2-digit commune numbers.
        commune_digits = 2 if len(birth_dep) == 3 else 3
        place = f"{birth_dep}{rng.randint(1, 10**commune_digits // 3):0{commune_digits}d}"
    nir13 = f"{prefix}{place}{rng.randint(1, 999):03d}"
    return Identity(family, given, line, postal_code, city, dep, nir13 + ins_key(nir13))
