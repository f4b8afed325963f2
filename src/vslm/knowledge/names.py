"""The words FactWorld names its entities with: first names, surnames, company words, cities, countries.

Every list is made of distinct words that occur in no other list and in no template, so that a name
in a text can only mean one entity kind and a word search finds exactly the entity (the tests rely on
it: no name of the novel pool may appear in the training text). Cities and countries are invented,
so that no reader, human or model, brings knowledge of them from elsewhere.
"""

from __future__ import annotations

# fmt: off
FIRST_NAMES = (
    "Alma", "Bruno", "Cora", "Dario", "Edda", "Fabian", "Greta", "Hector", "Ines", "Jonas",
    "Kira", "Lorenz", "Mira", "Nils", "Olga", "Pavel", "Quinn", "Rhea", "Soren", "Thea",
    "Ulla", "Viktor", "Wanda", "Xaver", "Yara", "Zeno", "Agnes", "Boris", "Celia", "Dmitri",
    "Elsa", "Fritz", "Gitta", "Hugo", "Ilse", "Janek", "Karla", "Lukas", "Marta", "Nora",
    "Oskar", "Petra", "Quirin", "Rosa", "Stefan", "Tilda", "Udo", "Vera", "Walter", "Xenia",
    "Yusuf", "Zora", "Anton", "Bianca", "Carlo", "Dora", "Emil", "Flora", "Gustav", "Hanna",
    "Ivo", "Jana", "Kasimir", "Lena", "Magnus", "Nadia", "Otto", "Paula", "Rainer", "Selma",
    "Tobias", "Ursula", "Valentin", "Wilma", "Yvonne", "Zdenek", "Arne", "Britta", "Casimir", "Delia",
    "Edgar", "Frida", "Gregor", "Helga", "Igor", "Judith", "Konrad", "Liesel", "Matteo", "Nele",
    "Orla", "Philipp", "Romy", "Sven", "Tamara", "Ugo", "Vilma", "Wolf", "Ximena", "Yannick",
)
SURNAMES = (
    "Abbot", "Brandt", "Castell", "Dorn", "Eckert", "Falk", "Gruber", "Haas", "Ibsen", "Jansen",
    "Keller", "Lindqvist", "Moreau", "Novak", "Oberst", "Pohl", "Quast", "Rauch", "Sauer", "Tamm",
    "Ulrich", "Vogt", "Weiss", "Xylander", "Yilmaz", "Zeller", "Arendt", "Bauer", "Claes", "Dietz",
    "Engel", "Fuchs", "Grimm", "Horn", "Imhof", "Jaeger", "Kraus", "Lorenzen", "Mertens", "Nagel",
    "Ortmann", "Pfeiffer", "Quandt", "Roth", "Stahl", "Thiel", "Unger", "Voss", "Wendt", "Xander",
    "Yates", "Zimmer", "Albers", "Berger", "Conti", "Dahl", "Eder", "Frank", "Gerber", "Hesse",
    "Iversen", "Jost", "Kuhn", "Lang", "Maier", "Nolte", "Olsen", "Pahl", "Riedel", "Seidel",
    "Tesch", "Ulm", "Varga", "Winter", "Yoder", "Zeiss", "Ahrens", "Busch", "Cramer", "Deniz",
    "Ebert", "Fiedler", "Gollwitzer", "Hofer", "Ilic", "Janda", "Kessler", "Lutz", "Marek", "Neumann",
    "Ott", "Pavlik", "Quistorp", "Reuter", "Schulz", "Tauber", "Urban", "Vidal", "Wagner", "Zuber",
)
COMPANY_WORDS = (
    "Bluefin", "Corvid", "Ember", "Falcon", "Granite", "Harbor", "Indigo", "Juniper", "Kestrel", "Lantern",
    "Meridian", "Nimbus", "Obsidian", "Pinnacle", "Quartz", "Redwood", "Saffron", "Tundra", "Umber", "Vortex",
    "Willow", "Yonder", "Zephyr", "Aspen", "Beacon", "Cobalt", "Delta", "Evergreen", "Fjord", "Glacier",
    "Helix", "Ironclad", "Jasper", "Keystone", "Lumen", "Monarch", "Northwind", "Onyx", "Prism", "Quiver",
    "Raven", "Summit", "Trident", "Upland", "Vertex", "Wavecrest", "Yarrow", "Zenith", "Amber", "Bramble",
)
COMPANY_KINDS = ("Works", "Labs", "Foods", "Motors", "Press", "Bank", "Mills", "Textiles", "Shipping", "Studios")
COUNTRIES = ("Estoria", "Valdonia", "Kaldera", "Marovia", "Tessaly", "Ondria", "Brevania", "Luskar",
             "Quenmark", "Zarvia", "Pellaria", "Hoxland")
CITIES = (
    "Valmora", "Dunhelm", "Ostrava", "Kelvar", "Briskow", "Amberlee", "Torvik", "Lunesse", "Grayport", "Mirefield",
    "Casterby", "Elmsgate", "Nordhaven", "Sablon", "Pyrmont", "Rivenholt", "Quayle", "Jexford", "Fennwick",
    "Wyrmouth", "Halden", "Corrin", "Vesselby", "Ashcombe", "Brightwater", "Duskmere", "Ironvale", "Zolden",
    "Kingsreach", "Larkspur", "Mossbank", "Oakenshaw", "Pellworth", "Redmarsh", "Stonybrook", "Thornbury",
)
# fmt: on
